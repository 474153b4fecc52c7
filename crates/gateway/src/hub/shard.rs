//! One fan-out worker (`Shard`): the member cache of the channels hashed to it, and each event turned into
//! frames for those channels' sessions.

use super::*;

/// The fan-out state of one channel: its members, and the open sessions of those members as of session
/// session generation `generation` (rebuilt when a session opens or closes, or the membership changes), so the hot path
/// pushes to a flat list with no lookups.
struct ChannelFanout {
    members: FxHashSet<UserId>,
    sessions: Vec<Arc<SessionHandle>>,
    generation: u64,
}

impl ChannelFanout {
    fn new(members: FxHashSet<UserId>) -> Self {
        ChannelFanout {
            members,
            sessions: Vec::new(),
            generation: u64::MAX,
        }
    }
}

/// One fan-out worker. Owns the member cache of the channels hashed to it, so no lock guards it.
pub(super) struct Shard {
    hub: std::sync::Weak<Hub>,
    /// Continues the trace of each new message's send (see `Confab::send_span`).
    traces: TraceFollower,
    service: Arc<Confab>,
    channels: FxHashMap<ChannelId, ChannelFanout>,
    /// The hub's `members_epoch` the cache was filled under.
    members_epoch: u64,
}

const MEMBER_CACHE_MAX: usize = 100_000;

impl Shard {
    pub(super) fn new(hub: std::sync::Weak<Hub>, traces: TraceFollower, service: Arc<Confab>) -> Shard {
        Shard {
            hub,
            traces,
            service,
            channels: FxHashMap::default(),
            members_epoch: 0,
        }
    }

    pub(super) async fn run(mut self, mut events: Box<dyn EventStream>) {
        while let Some(ev) = events.next().await {
            let Some(hub) = self.hub.upgrade() else { break };
            self.handle(&hub, ev).await;
        }
    }

    /// The channel's fan-out entry, loading its members from the store on first use.
    async fn channel(&mut self, channel: &ChannelId) -> Option<&mut ChannelFanout> {
        if !self.channels.contains_key(channel) {
            match self.service.lookup().member_ids(channel).await {
                Ok(ids) => self.remember(channel, ids.into_iter().collect()),
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "cannot load members for fan-out");
                    return None;
                }
            }
        }
        self.channels.get_mut(channel)
    }

    fn remember(&mut self, channel: &ChannelId, members: FxHashSet<UserId>) {
        if self.channels.len() >= MEMBER_CACHE_MAX {
            self.channels.clear();
        }
        self.channels.insert(channel.clone(), ChannelFanout::new(members));
    }

    /// Pushes a frame to every open session of the channel's members (except one user's, for typing).
    async fn send_to_channel(&mut self, hub: &Hub, channel: &ChannelId, frame: &Arc<Frame>, except: Option<&UserId>) {
        let generation = hub.session_generation();
        let Some(fan) = self.channel(channel).await else { return };
        if fan.generation != generation {
            fan.sessions = hub.sessions_of(fan.members.iter());
            fan.generation = generation;
        }
        hub.push_all(&fan.sessions, frame, except);
    }

    fn frame(frame: ServerFrame<'_>) -> Arc<Frame> {
        Frame::plain(frame.to_json())
    }

    async fn handle(&mut self, hub: &Hub, ev: Event) {
        // Taken for every new message, whatever becomes of the event below (see `Confab::send_span`).
        let sent_in = match &ev {
            Event::MessageCreated(m) => self.service.send_span(self.traces, m),
            _ => None,
        };
        let epoch = hub.members_epoch.load(Ordering::Acquire);
        if epoch != self.members_epoch {
            self.channels.clear();
            self.members_epoch = epoch;
        }
        if let Some(channel) = ev.channel_id()
            && !ev.is_membership()
            && !self.service.follows_channel(channel)
        {
            // No session of this node is in it (a message sent here through the REST API, say).
            return;
        }
        match &ev {
            Event::MessageCreated(m) => {
                // A span only under a traced send: the fan-out of every other event costs nothing.
                let span = match &sent_in {
                    Some(send) => tracing::debug_span!(parent: send, "gateway.fanout",
                        channel_id = %m.channel_id, seq = m.seq.0, message_id = m.id.0),
                    None => tracing::Span::none(),
                };
                async {
                    let frame = Arc::new(Frame {
                        text: Utf8Bytes::from(
                            ServerFrame::MessageNew {
                                channel_id: m.channel_id.as_str(),
                                seq: m.seq.0,
                                message: MessageDto::from(&**m),
                            }
                            .to_json(),
                        ),
                        seq: Some((m.channel_id.clone(), m.seq.0)),
                        mark: None,
                    });
                    self.send_to_channel(hub, &m.channel_id, &frame, None).await;
                }
                .instrument(span)
                .await;
            }
            Event::MessageUpdated(m) => {
                let frame = Self::frame(ServerFrame::MessageUpdated {
                    channel_id: m.channel_id.as_str(),
                    seq: m.seq.0,
                    message: MessageDto::from(&**m),
                });
                self.send_to_channel(hub, &m.channel_id, &frame, None).await;
            }
            Event::MessageDeleted {
                channel_id,
                message_id,
                seq,
            } => {
                let frame = Self::frame(ServerFrame::MessageDeleted {
                    channel_id: channel_id.as_str(),
                    seq: seq.0,
                    message_id: message_id.0,
                });
                self.send_to_channel(hub, channel_id, &frame, None).await;
            }
            Event::ChannelCreated { channel, members } => {
                if !self.service.follows_channel(&channel.id) {
                    return; // none of its members has a session here
                }
                self.remember(&channel.id, members.iter().cloned().collect());
                let frame = Self::frame(ServerFrame::ChannelCreated {
                    channel: ChannelDto::new(channel),
                });
                self.send_to_channel(hub, &channel.id, &frame, None).await;
                Self::mark_joined(hub, channel, members);
            }
            Event::ChannelUpdated(channel) => {
                let frame = Self::frame(ServerFrame::ChannelUpdated {
                    channel: ChannelDto::new(channel),
                });
                self.send_to_channel(hub, &channel.id, &frame, None).await;
            }
            Event::ChannelDeleted { channel_id, members } => {
                self.channels.remove(channel_id);
                let frame = Self::frame(ServerFrame::ChannelDeleted {
                    channel_id: channel_id.as_str(),
                });
                hub.push_all(&hub.sessions_of(members.iter()), &frame, None);
            }
            Event::MembersJoined { channel, user_ids, by } => {
                if !self.service.follows_channel(&channel.id) {
                    // No member has a session here; a cached entry stays right for when one does.
                    if let Some(fan) = self.channels.get_mut(&channel.id) {
                        fan.members.extend(user_ids.iter().cloned());
                        fan.generation = u64::MAX;
                    }
                    return;
                }
                if let Some(fan) = self.channel(&channel.id).await {
                    fan.members.extend(user_ids.iter().cloned());
                    fan.generation = u64::MAX;
                }
                let frame = Self::frame(ServerFrame::MembersJoined {
                    channel: ChannelDto::new(channel),
                    user_ids,
                    by: by.as_ref().map(|u| u.as_str()),
                });
                self.send_to_channel(hub, &channel.id, &frame, None).await;
                Self::mark_joined(hub, channel, user_ids);
            }
            Event::MemberLeft { channel, user_id, by } => {
                let frame = Self::frame(ServerFrame::MemberLeft {
                    channel: ChannelDto::new(channel),
                    user_id: user_id.as_str(),
                    by: by.as_ref().map(|u| u.as_str()),
                });
                if let Some(fan) = self.channels.get_mut(&channel.id) {
                    fan.members.remove(user_id);
                    fan.generation = u64::MAX;
                }
                if self.service.follows_channel(&channel.id) {
                    self.send_to_channel(hub, &channel.id, &frame, None).await;
                }
                // The member who left learns it too.
                hub.push_all(&hub.sessions_of(std::iter::once(user_id)), &frame, None);
            }
            Event::ReadUpTo {
                channel_id,
                user_id,
                seq,
            } => {
                let frame = Self::frame(ServerFrame::Read {
                    channel_id: channel_id.as_str(),
                    user_id: user_id.as_str(),
                    seq: seq.0,
                });
                self.send_to_channel(hub, channel_id, &frame, None).await;
            }
            Event::Typing {
                channel_id,
                user_id,
                active,
            } => {
                let frame = Self::frame(ServerFrame::Typing {
                    channel_id: channel_id.as_str(),
                    user_id: user_id.as_str(),
                    active: *active,
                });
                self.send_to_channel(hub, channel_id, &frame, Some(user_id)).await;
            }
            Event::Presence {
                user_id,
                online,
                last_seen_at,
            } => {
                let frame = Self::frame(ServerFrame::Presence {
                    user_id: user_id.as_str(),
                    online: *online,
                    last_seen_at: *last_seen_at,
                });
                let max = self.service.limits().presence_max_members;
                match self.service.lookup().contacts(user_id, max).await {
                    Ok(contacts) => hub.push_all(&hub.sessions_of(contacts.iter()), &frame, None),
                    Err(e) => tracing::warn!(user = %user_id, error = %e, "cannot load contacts for presence"),
                }
            }
            Event::ReplyDelta {
                channel_id,
                message_id,
                seq,
                offset,
                delta,
            } => {
                let frame = Self::frame(ServerFrame::MessageDelta {
                    channel_id: channel_id.as_str(),
                    seq: seq.0,
                    message_id: message_id.0,
                    offset: *offset,
                    delta,
                });
                self.send_to_channel(hub, channel_id, &frame, None).await;
            }
            // A blocked or deleted account's open sessions close: its tokens no longer count.
            Event::UserDeleted(id) => hub.revoke_user(id),
            Event::UserUpdated(u) if u.disabled => hub.revoke_user(&u.id),
            Event::SessionsRevoked(id) => hub.recheck_user(id),
            Event::Resync => hub.resync_all(),
            Event::ChannelCatchUp {
                channel_id,
                after,
                user_ids,
            } => {
                let mark = Frame::mark(channel_id, after.0, true);
                hub.push_all(&hub.sessions_of(user_ids.iter()), &mark, None);
            }
            Event::UserCreated(_)
            | Event::UserUpdated(_)
            | Event::BotChanged(_)
            | Event::BotTriggered { .. }
            | Event::ReplyStopRequested { .. }
            | Event::SettingsChanged { .. }
            | Event::OutboxAppended => {}
        }
    }

    /// Tells the sessions of the users who joined where the channel starts for them.
    fn mark_joined(hub: &Hub, channel: &Channel, joined: &[UserId]) {
        let sessions = hub.sessions_of(joined.iter());
        if !sessions.is_empty() {
            hub.push_all(&sessions, &Frame::mark(&channel.id, channel.last_seq.0, false), None);
        }
    }
}
