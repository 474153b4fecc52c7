"""Drives a live Confab server through the official Sendbird Platform SDK for Python (sendbird-platform-sdk
2.1.5, unchanged), the way an application written against Sendbird would, and asserts on every answer.

Environment: SENDBIRD_HOST (base URL without /v3), SENDBIRD_API_TOKEN (the master token), AI_BOT_ID (a bot
whose LLM answers `ai_chatbot_replies`). Exit status 0 when every step passed.
"""

import json
import os
import sys
import time
import urllib.request

import sendbird_platform_sdk
from sendbird_platform_sdk.api import bot_api, group_channel_api, message_api, user_api
from sendbird_platform_sdk.model.create_a_bot_request import CreateABotRequest
from sendbird_platform_sdk.model.create_a_group_channel_request import CreateAGroupChannelRequest
from sendbird_platform_sdk.model.create_a_user_request import CreateAUserRequest
from sendbird_platform_sdk.model.create_user_token_request import CreateUserTokenRequest
from sendbird_platform_sdk.model.invite_as_members_request import InviteAsMembersRequest
from sendbird_platform_sdk.model.join_channels_request import JoinChannelsRequest
from sendbird_platform_sdk.model.leave_a_channel_request import LeaveAChannelRequest
from sendbird_platform_sdk.model.send_a_message_request import SendAMessageRequest
from sendbird_platform_sdk.model.sendbird_user import SendbirdUser
from sendbird_platform_sdk.model.update_a_group_channel_request import UpdateAGroupChannelRequest
from sendbird_platform_sdk.model.update_a_message_request import UpdateAMessageRequest
from sendbird_platform_sdk.model.update_a_user_request import UpdateAUserRequest
from sendbird_platform_sdk.model.update_bot_by_id_data import UpdateBotByIdData

HOST = os.environ["SENDBIRD_HOST"]
TOKEN = os.environ["SENDBIRD_API_TOKEN"]
AI_BOT = os.environ["AI_BOT_ID"]
SUFFIX = str(int(time.time() * 1000))


def step(name):
    print("--", name, flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def texts(page):
    return [m.get("message") for m in page.get("messages", [])]


cfg = sendbird_platform_sdk.Configuration(host=HOST)
with sendbird_platform_sdk.ApiClient(cfg) as client:
    users = user_api.UserApi(client)
    channels = group_channel_api.GroupChannelApi(client)
    messages = message_api.MessageApi(client)
    bots = bot_api.BotApi(client)
    alice, bob, carol = ("alice_" + SUFFIX, "bob_" + SUFFIX, "carol_" + SUFFIX)

    step("users")
    for uid, nick in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        u = users.create_a_user(
            api_token=TOKEN,
            create_a_user_request=CreateAUserRequest(user_id=uid, nickname=nick, profile_url=""),
        )
        expect(u.user_id == uid and u.nickname == nick, f"created user {u}")
    try:
        users.create_a_user(
            api_token=TOKEN, create_a_user_request=CreateAUserRequest(user_id=alice, nickname="again", profile_url="")
        )
        raise AssertionError("a duplicate user was created")
    except sendbird_platform_sdk.ApiException as e:
        expect(e.status == 400 and json.loads(e.body)["code"] == 400202, f"duplicate user: {e.status} {e.body}")

    viewed = users.view_a_user(alice, api_token=TOKEN)
    expect(viewed.user_id == alice and viewed.nickname == "Alice", f"view user {viewed}")
    renamed = users.update_a_user(
        bob, api_token=TOKEN, update_a_user_request=UpdateAUserRequest(nickname="Bobby", profile_url="")
    )
    expect(renamed.user_id == bob and renamed.nickname == "Bobby", f"update user {renamed}")
    listed = users.list_users(api_token=TOKEN, limit=100)
    expect({alice, bob, carol} <= {u.user_id for u in listed.users}, f"list_users {[u.user_id for u in listed.users]}")
    issued = users.create_user_token(
        alice, api_token=TOKEN,
        create_user_token_request=CreateUserTokenRequest(expires_at=int(time.time() * 1000) + 3_600_000),
    )
    expect(issued.token and issued.expires_at > 0, f"user token {issued}")

    step("distinct channel")
    pair = [SendbirdUser(user_id=alice), SendbirdUser(user_id=bob)]
    d1 = channels.create_a_group_channel(
        api_token=TOKEN,
        create_a_group_channel_request=CreateAGroupChannelRequest(users=pair, is_distinct=True, name="pair"),
    )
    d2 = channels.create_a_group_channel(
        api_token=TOKEN,
        create_a_group_channel_request=CreateAGroupChannelRequest(
            users=[SendbirdUser(user_id=bob), SendbirdUser(user_id=alice)], is_distinct=True
        ),
    )
    expect(d1.channel_url == d2.channel_url, f"distinct channel reused: {d1.channel_url} vs {d2.channel_url}")

    step("non-distinct channel")
    url = "sdk_" + SUFFIX
    ch = channels.create_a_group_channel(
        api_token=TOKEN,
        create_a_group_channel_request=CreateAGroupChannelRequest(
            users=pair, user_ids=[alice, bob], name="compat test", channel_url=url, is_distinct=False,
            custom_type="support", data='{"topic":"sdk"}',
        ),
    )
    expect(ch.channel_url == url and ch.name == "compat test", f"created channel {ch.channel_url}")
    expect(ch.member_count == 2, f"member_count {ch.member_count}")
    other = channels.create_a_group_channel(
        api_token=TOKEN,
        create_a_group_channel_request=CreateAGroupChannelRequest(users=pair, is_distinct=False),
    )
    expect(other.channel_url not in (url, d1.channel_url), "a non-distinct channel is a new channel")

    got = channels.get_a_group_channel(url, api_token=TOKEN)
    expect(got.channel_url == url and got.custom_type == "support" and got.data == '{"topic":"sdk"}', f"view {got}")
    listed = channels.list_channels(api_token=TOKEN, limit=100)
    expect(url in [c.channel_url for c in listed.channels], "list_channels includes the channel")
    upd = channels.update_a_group_channel(
        url, api_token=TOKEN, update_a_group_channel_request=UpdateAGroupChannelRequest(name="renamed")
    )
    expect(upd.name == "renamed", f"update {upd.name}")

    step("members")
    channels.invite_as_members(url, api_token=TOKEN, invite_as_members_request=InviteAsMembersRequest(user_ids=[carol]))
    members = channels.list_members(url, api_token=TOKEN)
    expect(sorted(m.user_id for m in members.members) == sorted([alice, bob, carol]), f"members {members}")
    expect(channels.check_if_member(url, carol, api_token=TOKEN).is_member is True, "carol is a member")
    channels.leave_a_channel(url, api_token=TOKEN, leave_a_channel_request=LeaveAChannelRequest(user_ids=[carol]))
    expect(channels.check_if_member(url, carol, api_token=TOKEN).is_member is False, "carol left")
    members = channels.list_members(url, api_token=TOKEN)
    expect(sorted(m.user_id for m in members.members) == sorted([alice, bob]), f"members after leave {members}")

    step("messages")
    sent = []
    for i, (sender, text) in enumerate(((alice, "one"), (bob, "two"), (alice, "three"))):
        m = messages.send_a_message(
            "group_channels", url, api_token=TOKEN,
            send_a_message_request=SendAMessageRequest(
                message_type="MESG", user_id=sender, message=text, custom_type="note", dedup_id=f"d{i}-{SUFFIX}"
            ),
        )
        expect(m.message == text and m.user.user_id == sender and m.type == "MESG", f"sent {m}")
        sent.append(m)
    again = messages.send_a_message(
        "group_channels", url, api_token=TOKEN,
        send_a_message_request=SendAMessageRequest(
            message_type="MESG", user_id=alice, message="one", custom_type="note", dedup_id=f"d0-{SUFFIX}"
        ),
    )
    expect(again.message_id == sent[0].message_id, "a retried dedup_id returns the original")

    future = int(time.time() * 1000) + 60_000
    page = messages.list_messages("group_channels", url, future, 0, api_token=TOKEN, prev_limit=15, next_limit=0, include=True)
    expect(texts(page) == ["one", "two", "three"], f"list by message_ts: {texts(page)}")
    page = messages.list_messages(
        "group_channels", url, 0, sent[0].message_id, api_token=TOKEN, prev_limit=0, next_limit=15, include=False
    )
    expect(texts(page) == ["two", "three"], f"list by message_id: {texts(page)}")
    page = messages.list_messages(
        "group_channels", url, future, 0, api_token=TOKEN, prev_limit=2, next_limit=0, reverse=True
    )
    expect(texts(page) == ["three", "two"], f"reverse: {texts(page)}")

    viewed = messages.get_a_message("group_channels", url, sent[1].message_id, api_token=TOKEN)
    expect(viewed.message == "two" and viewed.user.user_id == bob, f"view message {viewed}")
    edited = messages.update_a_message(
        "group_channels", url, sent[1].message_id, api_token=TOKEN,
        update_a_message_request=UpdateAMessageRequest(message_type="MESG", message="two, edited"),
    )
    expect(edited.message == "two, edited", f"edited {edited}")
    deleted = messages.delete_a_message("group_channels", url, sent[2].message_id, api_token=TOKEN)
    expect(deleted == {}, f"delete answers {{}}: {deleted}")
    page = messages.list_messages("group_channels", url, future, 0, api_token=TOKEN, prev_limit=15, next_limit=0)
    expect(texts(page) == ["one", "two, edited"], f"after edit and delete: {texts(page)}")

    step("bots")
    bot_id = "helper_" + SUFFIX
    created = bots.create_a_bot(
        api_token=TOKEN,
        create_a_bot_request=CreateABotRequest(
            bot_userid=bot_id, bot_nickname="Helper", bot_profile_url="", bot_type="support",
            bot_callback_url="https://bots.example.com/callback", is_privacy_mode=True,
        ),
    )
    expect(created.bot.bot_userid == bot_id and created.bot.bot_token, f"created bot {created}")
    listed = bots.list_bots(api_token=TOKEN, limit=100)
    expect(bot_id in [b.bot.bot_userid for b in listed.bots], "list_bots includes the bot")
    viewed = bots.view_bot_by_id(bot_id, api_token=TOKEN)
    expect(viewed.bot.bot_nickname == "Helper" and viewed.is_privacy_mode is True, f"view bot {viewed}")
    updated = bots.update_bot_by_id(
        bot_id, api_token=TOKEN,
        update_bot_by_id_data=UpdateBotByIdData(
            bot_userid=bot_id, bot_nickname="Helper 2", bot_profile_url="", bot_callback_url="https://bots.example.com/cb2",
            is_privacy_mode=True, enable_mark_as_read=True, show_member=False, channel_invitation_preference=0,
        ),
    )
    expect(updated.bot.bot_nickname == "Helper 2" and updated.bot_callback_url.endswith("/cb2"), f"update bot {updated}")
    joined = bots.join_channels(bot_id, api_token=TOKEN, join_channels_request=JoinChannelsRequest(channel_urls=[url]))
    expect(joined.channel_url == url, f"join_channels answers the channel: {joined}")
    members = channels.list_members(url, api_token=TOKEN)
    expect(bot_id in [m.user_id for m in members.members], "the bot is a member")
    said = bots.send_a_bot_message(bot_id, "MESG", url, api_token=TOKEN, message="hello from the bot", mentioned_user_ids=[alice])
    expect(said.message["message"] == "hello from the bot", f"bot message {said}")
    page = messages.list_messages("group_channels", url, future, 0, api_token=TOKEN, prev_limit=1, next_limit=0)
    last = page.get("messages")[-1]
    expect(last["message"] == "hello from the bot" and last["user"]["user_id"] == bot_id, f"bot message in history {last}")
    expect(bots.leave_a_group_channel(url, bot_id, api_token=TOKEN) == {}, "bot leaves")
    members = channels.list_members(url, api_token=TOKEN)
    expect(bot_id not in [m.user_id for m in members.members], "the bot left")
    bots.join_channels(bot_id, api_token=TOKEN, join_channels_request=JoinChannelsRequest(channel_urls=[url, d1.channel_url]))
    expect(bots.leave_group_channels(bot_id, api_token=TOKEN) == {}, "bot leaves every channel")
    for c in (url, d1.channel_url):
        expect(channels.check_if_member(c, bot_id, api_token=TOKEN).is_member is False, f"the bot left {c}")
    expect(bots.delete_bot_by_id(bot_id, api_token=TOKEN) == {}, "bot deleted")

    step("ai_chatbot_replies (no SDK method: plain HTTP, as Sendbird's own sample)")
    req = urllib.request.Request(
        f"{HOST}/v3/bots/{AI_BOT}/ai_chatbot_replies",
        data=json.dumps({"messages": [{"role": "user", "content": "Hi"}], "use_streaming_response": False}).encode(),
        headers={"Api-Token": TOKEN, "Content-Type": "application/json; charset=utf8"},
        method="POST",
    )
    reply = json.load(urllib.request.urlopen(req))["reply_messages"][0]
    expect(isinstance(reply, str) and reply, f"ai reply {reply!r}")

    step("cleanup")
    expect(channels.delete_a_group_channel(url, api_token=TOKEN) == {}, "channel deleted")
    try:
        channels.get_a_group_channel(url, api_token=TOKEN)
        raise AssertionError("a deleted channel is still there")
    except sendbird_platform_sdk.ApiException as e:
        expect(json.loads(e.body)["code"] == 400201, f"deleted channel: {e.body}")
    expect(users.delete_a_user(carol, api_token=TOKEN) == {}, "user deleted")
    try:
        users.view_a_user(carol, api_token=TOKEN)
        raise AssertionError("a deleted user is still there")
    except sendbird_platform_sdk.ApiException as e:
        expect(json.loads(e.body)["code"] == 400201, f"deleted user: {e.body}")

print("sendbird-platform-sdk", sendbird_platform_sdk.__version__, "ok", flush=True)
sys.exit(0)
