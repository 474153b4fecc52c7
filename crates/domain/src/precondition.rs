//! Preconditions: the facts a write depends on, checked by the store in the write's own transaction.
//!
//! The rules are the service's (who may send where, how deep a thread goes); a store knows only how to test
//! each [`Fact`] against its rows, not why it is asked. Checking inside the transaction is what makes a rule
//! hold under concurrency: a member removed, or an account blocked, between a check and the write cannot
//! slip a message in.

use crate::error::DomainError;
use crate::ids::{ChannelId, FileId, MessageId, UserId};

/// One fact about stored rows, as of the write's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// The channel exists.
    ChannelExists(ChannelId),
    /// The user is a member of the channel.
    Member { channel: ChannelId, user: UserId },
    /// The account exists and is not disabled.
    ActiveAccount(UserId),
    /// The message exists and is in the channel.
    MessageIn { message: MessageId, channel: ChannelId },
    /// The message exists and names the user among its mentions.
    Mentions { message: MessageId, user: UserId },
    /// The message exists and is not itself a reply in a thread.
    ThreadRoot(MessageId),
    /// The file's record exists.
    FileExists(FileId),
    /// The file exists and was uploaded for the channel.
    FileIn { file: FileId, channel: ChannelId },
}

/// A condition over facts: one fact, or all / any of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Fact(Fact),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

impl Condition {
    /// Evaluates with `holds` testing one fact (short-circuiting, in order).
    pub fn eval<E>(&self, holds: &mut impl FnMut(&Fact) -> Result<bool, E>) -> Result<bool, E> {
        match self {
            Condition::Fact(f) => holds(f),
            Condition::All(cs) => {
                for c in cs {
                    if !c.eval(holds)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Condition::Any(cs) => {
                for c in cs {
                    if c.eval(holds)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

impl From<Fact> for Condition {
    fn from(f: Fact) -> Self {
        Condition::Fact(f)
    }
}

/// A condition a write needs, and the error the write fails with when it does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precondition {
    pub condition: Condition,
    pub otherwise: DomainError,
}

impl Precondition {
    pub fn new(condition: impl Into<Condition>, otherwise: DomainError) -> Self {
        Precondition {
            condition: condition.into(),
            otherwise,
        }
    }

    /// Checks `preconditions` in order: the first that does not hold is the error.
    pub fn check_all<E>(
        preconditions: &[Precondition],
        mut holds: impl FnMut(&Fact) -> Result<bool, E>,
    ) -> Result<Result<(), DomainError>, E> {
        for p in preconditions {
            if !p.condition.eval(&mut holds)? {
                return Ok(Err(p.otherwise.clone()));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn the_first_failing_precondition_is_the_error_and_any_all_short_circuit() {
        let active = Fact::ActiveAccount(u("a"));
        let blocked = Fact::ActiveAccount(u("b"));
        let checks = [
            Precondition::new(
                Condition::Any(vec![blocked.clone().into(), active.clone().into()]),
                DomainError::forbidden("first"),
            ),
            Precondition::new(
                Condition::All(vec![active.clone().into(), blocked.clone().into()]),
                DomainError::forbidden("second"),
            ),
            Precondition::new(blocked.clone(), DomainError::forbidden("third")),
        ];
        let mut asked = Vec::new();
        let res = Precondition::check_all::<()>(&checks, |f| {
            asked.push(f.clone());
            Ok(*f == active)
        })
        .unwrap();
        assert_eq!(res, Err(DomainError::forbidden("second")));
        // Any stops at the first true, All at the first false; the third is never asked.
        assert_eq!(asked, vec![blocked.clone(), active.clone(), active, blocked]);
        assert_eq!(Precondition::check_all::<()>(&[], |_| Ok(false)).unwrap(), Ok(()));
    }
}
