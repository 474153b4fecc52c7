//! The `Store` port on PostgreSQL: reads through the pool, writes through the writer's queue.

use super::*;

#[async_trait]
impl Store for PostgresStore {
    /// A real read on a pooled connection and a real (empty) write committed by the writer.
    async fn ready(&self) -> bool {
        !self.writer.is_closed()
            && self
                .read(|c| Box::pin(async move { db::exists(c, "SELECT 1", &[]).await }))
                .await
                .is_ok()
            && self.write(Op::Ping).await.is_ok()
    }

    async fn create_user(&self, user: NewUser) -> DomainResult<User> {
        match self.write(Op::CreateUser(user)).await? {
            Outcome::User(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn get_user(&self, id: &UserId) -> DomainResult<Option<User>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::user(c, &id).await }))
            .await
    }

    async fn list_users(&self, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<User>> {
        let after = after.cloned();
        self.read(move |c| Box::pin(async move { queries::users_after(c, after.as_ref(), limit).await }))
            .await
    }

    async fn update_user(&self, id: &UserId, patch: UserPatch) -> DomainResult<User> {
        match self.write(Op::UpdateUser(id.clone(), patch)).await? {
            Outcome::User(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn delete_user(&self, id: &UserId) -> DomainResult<()> {
        self.write(Op::DeleteUser(id.clone())).await.map(|_| ())
    }

    async fn set_last_seen(&self, id: &UserId, at: Millis) -> DomainResult<()> {
        self.write(Op::SetLastSeen(id.clone(), at)).await.map(|_| ())
    }

    async fn create_session(&self, session: SessionRecord) -> DomainResult<()> {
        self.write(Op::CreateSession(session)).await.map(|_| ())
    }

    async fn find_session(&self, token_hash: &[u8; 32]) -> DomainResult<Option<SessionRecord>> {
        let h = *token_hash;
        self.read(move |c| Box::pin(async move { queries::session(c, &h).await }))
            .await
    }

    async fn revoke_sessions(&self, user: &UserId) -> DomainResult<u64> {
        match self.write(Op::RevokeSessions(user.clone())).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn create_channel(&self, channel: NewChannel) -> DomainResult<(Channel, bool)> {
        match self.write(Op::CreateChannel(channel)).await? {
            Outcome::Channel(c, created) => Ok((c, created)),
            _ => Err(unexpected()),
        }
    }

    async fn get_channel(&self, id: &ChannelId) -> DomainResult<Option<Channel>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::channel(c, &id).await }))
            .await
    }

    async fn update_channel(&self, id: &ChannelId, patch: ChannelPatch) -> DomainResult<Channel> {
        match self.write(Op::UpdateChannel(id.clone(), patch)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn delete_channel(&self, id: &ChannelId) -> DomainResult<()> {
        self.write(Op::DeleteChannel(id.clone())).await.map(|_| ())
    }

    async fn list_channels(&self, after: Option<&ChannelId>, limit: u32) -> DomainResult<Vec<Channel>> {
        let after = after.cloned();
        self.read(move |c| Box::pin(async move { queries::channels_after(c, after.as_ref(), limit).await }))
            .await
    }

    async fn list_member_channels(
        &self,
        user: &UserId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> DomainResult<Vec<MemberChannel>> {
        let (user, after) = (user.clone(), after.cloned());
        self.read(move |c| Box::pin(async move { queries::member_channels(c, &user, after.as_ref(), limit).await }))
            .await
    }

    async fn add_members(&self, channel: &ChannelId, users: Vec<UserId>, by: Option<UserId>) -> DomainResult<Channel> {
        match self.write(Op::AddMembers(channel.clone(), users, by)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn remove_member(&self, channel: &ChannelId, user: &UserId, by: Option<UserId>) -> DomainResult<Channel> {
        match self.write(Op::RemoveMember(channel.clone(), user.clone(), by)).await? {
            Outcome::Channel(c, _) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn get_member(&self, channel: &ChannelId, user: &UserId) -> DomainResult<Option<Member>> {
        let (channel, user) = (channel.clone(), user.clone());
        self.read(move |c| Box::pin(async move { queries::member(c, &channel, &user).await }))
            .await
    }

    async fn list_members(&self, channel: &ChannelId, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<Member>> {
        let (channel, after) = (channel.clone(), after.cloned());
        self.read(move |c| Box::pin(async move { queries::members_after(c, &channel, after.as_ref(), limit).await }))
            .await
    }

    async fn member_ids(&self, channel: &ChannelId) -> DomainResult<Vec<UserId>> {
        let channel = channel.clone();
        self.read(move |c| Box::pin(async move { queries::member_ids(c, &channel).await }))
            .await
    }

    async fn member_channel_ids(&self, user: &UserId) -> DomainResult<Vec<ChannelId>> {
        let user = user.clone();
        self.read(move |c| Box::pin(async move { queries::user_channel_ids(c, &user).await }))
            .await
    }

    async fn contacts(&self, user: &UserId, max_members: u32) -> DomainResult<Vec<UserId>> {
        let user = user.clone();
        self.read(move |c| Box::pin(async move { queries::contacts(c, &user, max_members).await }))
            .await
    }

    async fn mark_read(&self, channel: &ChannelId, user: &UserId, seq: ChannelSeq) -> DomainResult<ChannelSeq> {
        match self.write(Op::MarkRead(channel.clone(), user.clone(), seq)).await? {
            Outcome::Seq(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn append_message(&self, message: NewMessage, preconditions: Vec<Precondition>) -> DomainResult<Appended> {
        match self.write(Op::Append(Box::new(message), preconditions)).await? {
            Outcome::Appended(a) => Ok(*a),
            _ => Err(unexpected()),
        }
    }

    async fn get_message(&self, id: MessageId) -> DomainResult<Option<Message>> {
        self.read(move |c| Box::pin(async move { queries::message(c, id).await }))
            .await
    }

    async fn history(&self, query: HistoryQuery) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::history(c, &query).await }))
            .await
    }

    async fn history_matching(&self, query: HistoryQuery, filter: MessageFilter) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::history_matching(c, &query, &filter).await }))
            .await
    }

    async fn seq_before_time(&self, channel: &ChannelId, at: Millis) -> DomainResult<ChannelSeq> {
        let channel = channel.clone();
        self.read(move |c| Box::pin(async move { queries::seq_before_time(c, &channel, at).await }))
            .await
    }

    async fn thread(&self, parent: MessageId, after: Option<MessageId>, limit: u32) -> DomainResult<Vec<Message>> {
        self.read(move |c| Box::pin(async move { queries::thread(c, parent, after, limit).await }))
            .await
    }

    async fn edit_message(
        &self,
        id: MessageId,
        patch: MessagePatch,
        preconditions: Vec<Precondition>,
    ) -> DomainResult<Message> {
        match self.write(Op::Edit(id, patch, preconditions)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    async fn delete_message(&self, id: MessageId) -> DomainResult<Message> {
        match self.write(Op::Delete(id)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    async fn put_file(&self, file: FileObject, quota: FileQuota) -> DomainResult<()> {
        self.write(Op::PutFile(file, quota)).await.map(|_| ())
    }

    async fn get_file(&self, id: &FileId) -> DomainResult<Option<FileObject>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::file(c, &id).await }))
            .await
    }

    async fn delete_unattached_files(&self, before: Millis, limit: u32) -> DomainResult<Vec<FileId>> {
        match self.write(Op::DeleteUnattachedFiles(before, limit)).await? {
            Outcome::FileIds(ids) => Ok(ids),
            _ => Err(unexpected()),
        }
    }

    async fn create_bot(&self, user: NewUser, settings: BotSettings) -> DomainResult<Bot> {
        match self.write(Op::CreateBot(user, settings)).await? {
            Outcome::Bot(b) => Ok(*b),
            _ => Err(unexpected()),
        }
    }

    async fn update_bot(&self, id: &UserId, settings: BotSettings) -> DomainResult<Bot> {
        match self.write(Op::UpdateBot(id.clone(), settings)).await? {
            Outcome::Bot(b) => Ok(*b),
            _ => Err(unexpected()),
        }
    }

    async fn get_bot(&self, id: &UserId) -> DomainResult<Option<Bot>> {
        let id = id.clone();
        self.read(move |c| Box::pin(async move { queries::bot(c, &id).await }))
            .await
    }

    async fn list_bots(&self) -> DomainResult<Vec<Bot>> {
        self.read(|c| Box::pin(async move { queries::bots(c).await })).await
    }

    async fn save_reply_text(&self, id: MessageId, text: String) -> DomainResult<()> {
        self.write(Op::SaveReplyText(id, text)).await.map(|_| ())
    }

    async fn finish_reply(
        &self,
        id: MessageId,
        text: String,
        state: ReplyState,
        reason: Option<String>,
    ) -> DomainResult<Message> {
        match self.write(Op::FinishReply(id, text, state, reason)).await? {
            Outcome::Message(m) => Ok(*m),
            _ => Err(unexpected()),
        }
    }

    /// Every reply of the database still `generating` becomes `interrupted`. Meant for a start after every
    /// node stopped: with several nodes, it must not be called by one node on the replies another live node
    /// is generating (the cluster will need an owner per reply for that; not done yet).
    async fn sweep_generating(&self) -> DomainResult<u64> {
        match self.write(Op::SweepGenerating).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn heartbeat(&self, at: Millis) -> DomainResult<()> {
        self.write(Op::Heartbeat(at)).await.map(|_| ())
    }

    async fn sweep_silent_nodes(&self, silent_since: Millis) -> DomainResult<SilentNodes> {
        match self.write(Op::SweepSilentNodes(silent_since)).await? {
            Outcome::Swept(replies, offline) => Ok(SilentNodes { replies, offline }),
            _ => Err(unexpected()),
        }
    }

    async fn set_presence(&self, user: &UserId, here: bool) -> DomainResult<bool> {
        match self.write(Op::SetPresence(user.clone(), here)).await? {
            Outcome::Count(n) => Ok(n == 1),
            _ => Err(unexpected()),
        }
    }

    async fn online_among(&self, users: &[UserId]) -> DomainResult<Vec<UserId>> {
        let users: Vec<String> = users.iter().map(|u| u.as_str().to_string()).collect();
        self.read(move |c| Box::pin(async move { queries::online_among(c, &users).await }))
            .await
    }

    async fn forget_own_presence(&self) -> DomainResult<Vec<UserId>> {
        match self.write(Op::ForgetOwnPresence).await? {
            Outcome::Swept(_, offline) => Ok(offline),
            _ => Err(unexpected()),
        }
    }

    async fn record_usage(&self, usage: UsageRecord) -> DomainResult<()> {
        self.write(Op::RecordUsage(usage)).await.map(|_| ())
    }

    async fn usage(
        &self,
        from_day: &str,
        to_day: &str,
        bot: Option<&UserId>,
        user: Option<&UserId>,
    ) -> DomainResult<Vec<UsageRecord>> {
        let (from, to, bot, user) = (from_day.to_string(), to_day.to_string(), bot.cloned(), user.cloned());
        self.read(move |c| Box::pin(async move { queries::usage(c, &from, &to, bot.as_ref(), user.as_ref()).await }))
            .await
    }

    async fn put_provider(&self, name: &str, config: serde_json::Value) -> DomainResult<()> {
        self.write(Op::PutProvider(name.to_string(), config.to_string()))
            .await
            .map(|_| ())
    }

    async fn delete_provider(&self, name: &str) -> DomainResult<()> {
        self.write(Op::DeleteProvider(name.to_string())).await.map(|_| ())
    }

    async fn list_providers(&self) -> DomainResult<Vec<(String, serde_json::Value)>> {
        self.read(|c| Box::pin(async move { queries::providers(c).await }))
            .await
    }

    async fn put_setting(&self, namespace: &str, key: &str, value: serde_json::Value) -> DomainResult<()> {
        self.write(Op::PutSetting(
            namespace.to_string(),
            key.to_string(),
            value.to_string(),
        ))
        .await
        .map(|_| ())
    }

    async fn get_setting(&self, namespace: &str, key: &str) -> DomainResult<Option<serde_json::Value>> {
        let (namespace, key) = (namespace.to_string(), key.to_string());
        self.read(move |c| Box::pin(async move { queries::setting(c, &namespace, &key).await }))
            .await
    }

    async fn delete_setting(&self, namespace: &str, key: &str) -> DomainResult<bool> {
        match self
            .write(Op::DeleteSetting(namespace.to_string(), key.to_string()))
            .await?
        {
            Outcome::Count(n) => Ok(n > 0),
            _ => Err(unexpected()),
        }
    }

    async fn flag_message(&self, id: MessageId, rules: Vec<String>) -> DomainResult<()> {
        self.write(Op::Flag(id, rules)).await.map(|_| ())
    }

    async fn review_flag(&self, id: MessageId, state: FlagState, by: Option<UserId>) -> DomainResult<()> {
        self.write(Op::ReviewFlag(id, state, by)).await.map(|_| ())
    }

    async fn get_flag(&self, id: MessageId) -> DomainResult<Option<FlaggedMessage>> {
        self.read(move |c| Box::pin(async move { queries::flag(c, id).await }))
            .await
    }

    async fn list_flags(&self, query: FlagQuery) -> DomainResult<Vec<FlaggedMessage>> {
        self.read(move |c| Box::pin(async move { queries::flags(c, &query).await }))
            .await
    }

    async fn list_settings(&self, namespace: &str) -> DomainResult<Vec<(String, serde_json::Value)>> {
        let namespace = namespace.to_string();
        self.read(move |c| Box::pin(async move { queries::settings(c, &namespace).await }))
            .await
    }

    fn set_change_recorder(&self, recorder: Arc<dyn ChangeRecorder>) {
        *self.recorder.write().unwrap_or_else(|e| e.into_inner()) = Some(recorder);
    }

    async fn announce(&self, events: Vec<Event>) -> DomainResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(Op::Announce(events)).await.map(|_| ())
    }

    async fn outbox_after(&self, after: u64, limit: u32) -> DomainResult<Vec<OutboxEntry>> {
        self.read(move |c| Box::pin(async move { queries::outbox_after(c, after, limit).await }))
            .await
    }

    async fn outbox_head(&self) -> DomainResult<u64> {
        self.read(|c| Box::pin(async move { queries::outbox_head(c).await }))
            .await
    }

    async fn prune_outbox(&self, through: u64) -> DomainResult<u64> {
        match self.write(Op::PruneOutbox(through)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn put_dead_letter(&self, letter: DeadLetter) -> DomainResult<()> {
        self.write(Op::PutDeadLetter(letter)).await.map(|_| ())
    }

    async fn get_dead_letter(&self, endpoint: &str, event_id: u64) -> DomainResult<Option<DeadLetter>> {
        let endpoint = endpoint.to_string();
        self.read(move |c| Box::pin(async move { queries::dead_letter(c, &endpoint, event_id).await }))
            .await
    }

    async fn list_dead_letters(&self, endpoint: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>> {
        let endpoint = endpoint.to_string();
        self.read(move |c| Box::pin(async move { queries::dead_letters(c, &endpoint, after, limit).await }))
            .await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, now: Millis, until: Millis) -> DomainResult<bool> {
        match self
            .write(Op::AcquireLease(name.to_string(), holder.to_string(), now, until))
            .await?
        {
            Outcome::Count(n) => Ok(n > 0),
            _ => Err(unexpected()),
        }
    }

    async fn prune_leases(&self, before: Millis) -> DomainResult<u64> {
        match self.write(Op::PruneLeases(before)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> DomainResult<()> {
        self.write(Op::ReleaseLease(name.to_string(), holder.to_string()))
            .await
            .map(|_| ())
    }

    async fn delete_dead_letters(&self, endpoint: &str, event_id: Option<u64>) -> DomainResult<u64> {
        match self
            .write(Op::DeleteDeadLetters(endpoint.to_string(), event_id))
            .await?
        {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}
