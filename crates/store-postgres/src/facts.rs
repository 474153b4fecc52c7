//! Tests the [`Fact`]s of a write's preconditions against the rows, inside the write's transaction (within
//! the command's savepoint, after the batch took the write lock: no other writer of the cluster can change
//! a fact between its test and the write).

use confab_domain::{Condition, Fact, Precondition};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::error::{Fail, Res, corrupt};
use crate::rows::get;

/// `Ok` when every precondition holds, else the first failing one's error (`Precondition::check_all`'s
/// order). Every fact the preconditions name is tested in one statement, one `EXISTS` each: inside the
/// write's transaction, under the write lock, nothing changes between them, so testing a fact that the
/// evaluation's short-circuits would skip changes no answer, and saves a round trip per fact.
pub(crate) async fn check<C: GenericClient>(c: &C, preconditions: &[Precondition]) -> Res<()> {
    let mut facts: Vec<&Fact> = Vec::new();
    for p in preconditions {
        collect(&p.condition, &mut facts);
    }
    if facts.is_empty() {
        return Ok(());
    }
    let mut params: Vec<Box<dyn ToSql + Sync + Send + '_>> = Vec::new();
    let tests: Vec<String> = facts.iter().map(|f| test(f, &mut params)).collect();
    let sql = format!("SELECT {}", tests.join(", "));
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let found = crate::db::row(c, &sql, &refs).await?;
    let found = found.ok_or_else(|| corrupt("a precondition test returned no row"))?;
    let answers = (0..facts.len())
        .map(|i| get::<bool>(&found, i))
        .collect::<Res<Vec<bool>>>()?;
    Precondition::check_all(preconditions, |f| {
        let at = facts.iter().position(|known| *known == f);
        at.map(|i| answers[i]).ok_or(())
    })
    .map_err(|()| corrupt("a fact was not tested"))?
    .map_err(Fail::Domain)
}

/// The distinct facts of a condition, in order.
fn collect<'a>(condition: &'a Condition, facts: &mut Vec<&'a Fact>) {
    match condition {
        Condition::Fact(f) => {
            if !facts.contains(&f) {
                facts.push(f);
            }
        }
        Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| collect(c, facts)),
    }
}

/// The SQL test of one fact, its parameters appended to `params`.
fn test<'a>(fact: &'a Fact, params: &mut Vec<Box<dyn ToSql + Sync + Send + 'a>>) -> String {
    let mut arg = |p: Box<dyn ToSql + Sync + Send + 'a>| {
        params.push(p);
        format!("${}", params.len())
    };
    match fact {
        Fact::ChannelExists(ch) => format!(
            "EXISTS (SELECT 1 FROM channels WHERE id = {})",
            arg(Box::new(ch.as_str()))
        ),
        Fact::Member { channel, user } => format!(
            "EXISTS (SELECT 1 FROM members WHERE channel_id = {} AND user_id = {})",
            arg(Box::new(channel.as_str())),
            arg(Box::new(user.as_str()))
        ),
        Fact::ActiveAccount(u) => format!(
            "EXISTS (SELECT 1 FROM users WHERE id = {} AND NOT disabled)",
            arg(Box::new(u.as_str()))
        ),
        Fact::MessageIn { message, channel } => format!(
            "EXISTS (SELECT 1 FROM messages WHERE id = {} AND channel_id = {})",
            arg(Box::new(message.0)),
            arg(Box::new(channel.as_str()))
        ),
        Fact::Mentions { message, user } => format!(
            "EXISTS (SELECT 1 FROM messages WHERE id = {} AND {} = ANY(mentions))",
            arg(Box::new(message.0)),
            arg(Box::new(user.as_str()))
        ),
        Fact::ThreadRoot(m) => format!(
            "EXISTS (SELECT 1 FROM messages WHERE id = {} AND parent_id IS NULL)",
            arg(Box::new(m.0))
        ),
        Fact::FileExists(f) => format!("EXISTS (SELECT 1 FROM files WHERE id = {})", arg(Box::new(f.as_str()))),
        Fact::FileIn { file, channel } => format!(
            "EXISTS (SELECT 1 FROM files WHERE id = {} AND channel_id = {})",
            arg(Box::new(file.as_str())),
            arg(Box::new(channel.as_str()))
        ),
    }
}
