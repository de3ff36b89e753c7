//! Leadership inherited from before this process started (docs/contract.md §3.5, §3.6), pure: no
//! clock, no I/O.
//!
//! The kubelet projects the downward-API file before it starts a container, so a `leader` the
//! helper finds at its first read was granted before the helper started, and may already be
//! revoked: when a leader's container dies, the pod goes NotReady and the controller demotes it,
//! but the kubelet may restart the container before the demotion reaches the file. Such a
//! leadership is *inherited*; one that a change after the first read brings is *fresh*.
//!
//! `run` and `shards` hold inherited leadership back until a change of the file (any new update
//! after the first read) settles it, or until their `--inherited-role-wait` deadline passes with
//! no change: the bound keeps a pod whose readiness never flipped (its lock never moved) from
//! being left leaderless. Fresh leadership is acted on at once, as always.
//!
//! ```text
//!  first read ──leader──▶ held ──change: leader, same token──▶ Confirmed  ─┐
//!      │                   │   ──change: leader, new token───▶ NewToken   ├─▶ acted on
//!      │                   │   ──wait elapsed, no change─────▶ WaitElapsed┘
//!      │                   └───change: standby / no annotation▶ Revoked ───▶ nothing to act on
//!      └──standby, none, or wait 0──▶ nothing held
//! ```

use std::fmt;

use super::shardset::Shard;

/// How a held-back leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A change of the file still says `leader` with the same token: the controller kept it.
    Confirmed,
    /// A change says `leader` with another token: a fresh acquisition, acted on as any is.
    NewToken(Option<i64>),
    /// A change says `standby`, or the annotation is gone: the demotion arrived.
    Revoked,
    /// The wait passed with no change of the file: acted on as it stands.
    WaitElapsed,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Confirmed => f.write_str("confirmed by a change of the file"),
            Ending::NewToken(token) => write!(f, "superseded by a change to {} (a fresh acquisition)", token_text(*token)),
            Ending::Revoked => f.write_str("revoked by a change of the file"),
            Ending::WaitElapsed => f.write_str("unchanged when the wait elapsed: acting on it"),
        }
    }
}

/// `token 41`, or `no token` (the single-value file carries none).
pub fn token_text(token: Option<i64>) -> String {
    token.map_or_else(|| "no token".to_string(), |t| format!("token {t}"))
}

/// The leaderships held back: those found at the first read, until a change or the wait ends
/// them (all at once: a change is a newer update of the whole file, and the wait is one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inherited {
    held: Vec<Shard>,
}

impl Inherited {
    /// What the first read found the pod leading; `wait` is false when `--inherited-role-wait`
    /// is 0, which turns the rule off: nothing is held.
    pub fn at_first_read(leading: &[Shard], wait: bool) -> Self {
        Self { held: if wait { leading.to_vec() } else { Vec::new() } }
    }

    /// Whether anything is held back (and the wait's deadline is running).
    pub fn is_waiting(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn held(&self) -> &[Shard] {
        &self.held
    }

    /// What may be acted on of what the file says the pod leads: all but the held leaderships.
    pub fn admitted(&self, leading: &[Shard]) -> Vec<Shard> {
        leading.iter().filter(|shard| !self.held.contains(shard)).cloned().collect()
    }

    /// The file changed after the first read (a new update, not a re-read) and now says the pod
    /// leads `leading`: every held leadership is settled by it.
    pub fn changed(&mut self, leading: &[Shard]) -> Vec<(Shard, Ending)> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|held| {
                let ending = match leading.iter().find(|now| now.lock == held.lock) {
                    Some(now) if now.token == held.token => Ending::Confirmed,
                    Some(now) => Ending::NewToken(now.token),
                    None => Ending::Revoked,
                };
                (held, ending)
            })
            .collect()
    }

    /// The wait passed with no change of the file: every held leadership is acted on.
    pub fn elapsed(&mut self) -> Vec<(Shard, Ending)> {
        std::mem::take(&mut self.held).into_iter().map(|held| (held, Ending::WaitElapsed)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(lock: &str, token: i64) -> Shard {
        Shard { lock: lock.into(), token: Some(token) }
    }

    #[test]
    fn leadership_found_at_the_first_read_is_held_and_nothing_else() {
        let gate = Inherited::at_first_read(&[shard("a", 5), shard("b", 6)], true);
        assert!(gate.is_waiting());
        assert_eq!(gate.admitted(&[shard("a", 5), shard("b", 6)]), []);
        // Whatever differs from what was inherited is not held (it came after the first read).
        assert_eq!(gate.admitted(&[shard("a", 7), shard("c", 1)]), [shard("a", 7), shard("c", 1)]);

        let nothing = Inherited::at_first_read(&[], true);
        assert!(!nothing.is_waiting());
        assert_eq!(nothing.admitted(&[shard("a", 5)]), [shard("a", 5)], "leadership gained later is fresh");
    }

    #[test]
    fn a_wait_of_zero_holds_nothing() {
        let gate = Inherited::at_first_read(&[shard("a", 5)], false);
        assert!(!gate.is_waiting());
        assert_eq!(gate.admitted(&[shard("a", 5)]), [shard("a", 5)]);
    }

    #[test]
    fn a_change_settles_every_held_leadership_by_what_the_file_now_says() {
        let mut gate = Inherited::at_first_read(&[shard("a", 5), shard("b", 6), shard("c", 7)], true);
        let endings = gate.changed(&[shard("a", 5), shard("b", 9), shard("d", 1)]);
        assert_eq!(
            endings,
            [(shard("a", 5), Ending::Confirmed), (shard("b", 6), Ending::NewToken(Some(9))), (shard("c", 7), Ending::Revoked)]
        );
        assert!(!gate.is_waiting());
        assert_eq!(gate.admitted(&[shard("a", 5), shard("b", 9), shard("d", 1)]), [shard("a", 5), shard("b", 9), shard("d", 1)]);
        assert_eq!(gate.changed(&[]), [], "settled once: later changes are ordinary ones");
        assert_eq!(gate.elapsed(), [], "the deadline of a settled wait does nothing");
    }

    #[test]
    fn the_single_value_file_confirms_a_leader_without_a_token() {
        let leader = Shard { lock: "l".into(), token: None };
        let mut gate = Inherited::at_first_read(std::slice::from_ref(&leader), true);
        assert_eq!(gate.changed(std::slice::from_ref(&leader)), [(leader, Ending::Confirmed)]);
    }

    #[test]
    fn the_wait_elapsing_admits_what_was_held() {
        let mut gate = Inherited::at_first_read(&[shard("a", 5)], true);
        assert_eq!(gate.elapsed(), [(shard("a", 5), Ending::WaitElapsed)]);
        assert!(!gate.is_waiting());
        assert_eq!(gate.admitted(&[shard("a", 5)]), [shard("a", 5)]);
        assert_eq!(gate.changed(&[]), [], "a change after the wait is an ordinary one");
    }

    #[test]
    fn endings_read_as_the_end_of_a_log_line() {
        assert_eq!(Ending::NewToken(Some(9)).to_string(), "superseded by a change to token 9 (a fresh acquisition)");
        assert_eq!(Ending::Revoked.to_string(), "revoked by a change of the file");
        assert_eq!(token_text(None), "no token");
    }
}
