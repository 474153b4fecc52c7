//! Tests the [`Fact`]s of a write's preconditions against the rows, inside the write's transaction (within
//! the command's savepoint, after the batch took the write lock: no other writer of the cluster can change
//! a fact between its test and the write).

use confab_domain::{Fact, Precondition};
use deadpool_postgres::GenericClient;

use crate::db::exists;
use crate::error::{Fail, Res};

/// `Ok` when every precondition holds, else the first failing one's error. `Precondition::check_all` is
/// synchronous, so each fact is tested first (in the order `check_all` asks for them: it stops at the first
/// failing precondition, and `Any`/`All` short-circuit) by replaying the evaluation with the answers so far.
pub(crate) async fn check<C: GenericClient>(c: &C, preconditions: &[Precondition]) -> Res<()> {
    let mut known: Vec<(Fact, bool)> = Vec::new();
    loop {
        // Evaluate with what is known; the first fact not known yet stops the evaluation.
        let mut missing = None;
        let outcome = Precondition::check_all(preconditions, |f| match known.iter().find(|(k, _)| k == f) {
            Some((_, holds)) => Ok(*holds),
            None => {
                missing = Some(f.clone());
                Err(())
            }
        });
        match (outcome, missing) {
            (Ok(result), _) => return result.map_err(Fail::Domain),
            (Err(()), Some(fact)) => {
                let holds = holds(c, &fact).await?;
                known.push((fact, holds));
            }
            (Err(()), None) => unreachable!("an evaluation stops only at an unknown fact"),
        }
    }
}

async fn holds<C: GenericClient>(c: &C, fact: &Fact) -> Res<bool> {
    match fact {
        Fact::ChannelExists(ch) => exists(c, "SELECT 1 FROM channels WHERE id = $1", &[&ch.as_str()]).await,
        Fact::Member { channel, user } => {
            exists(
                c,
                "SELECT 1 FROM members WHERE channel_id = $1 AND user_id = $2",
                &[&channel.as_str(), &user.as_str()],
            )
            .await
        }
        Fact::ActiveAccount(u) => exists(c, "SELECT 1 FROM users WHERE id = $1 AND NOT disabled", &[&u.as_str()]).await,
        Fact::MessageIn { message, channel } => {
            exists(
                c,
                "SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2",
                &[&message.0, &channel.as_str()],
            )
            .await
        }
        Fact::Mentions { message, user } => {
            exists(
                c,
                "SELECT 1 FROM messages WHERE id = $1 AND $2 = ANY(mentions)",
                &[&message.0, &user.as_str()],
            )
            .await
        }
        Fact::ThreadRoot(m) => exists(c, "SELECT 1 FROM messages WHERE id = $1 AND parent_id IS NULL", &[&m.0]).await,
        Fact::FileExists(f) => exists(c, "SELECT 1 FROM files WHERE id = $1", &[&f.as_str()]).await,
        Fact::FileIn { file, channel } => {
            exists(
                c,
                "SELECT 1 FROM files WHERE id = $1 AND channel_id = $2",
                &[&file.as_str(), &channel.as_str()],
            )
            .await
        }
    }
}
