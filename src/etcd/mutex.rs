//! etcd's mutex recipe as transactions, so LeaderLock's keys interoperate with `etcdctl lock`,
//! the v3lock service and Go's `concurrency.Mutex` (docs/contract.md §4): each candidate's key
//! is created once, guarded on `create_revision == 0`, and the lowest create revision holds.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};

use crate::lock::{Move, Op};

/// The transaction for one operation on the lock `prefix`, and its name for errors. The guarded
/// create also reads the current owner (lowest create revision), like the recipe, so the
/// uncontended path is one round trip.
pub fn txn_for(prefix: &str, op: &Op) -> (&'static str, Txn) {
    let owner = TxnOp::get(
        format!("{prefix}/"),
        Some(GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1)),
    );
    match op {
        Op::Create { key, value, lease } => (
            "create candidate key",
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(*lease))), owner.clone()])
                .or_else([owner]),
        ),
        // Guarded on the create revision: never deletes a key someone else recreated meanwhile.
        Op::Delete { key, create_revision } => (
            "delete candidate key",
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, *create_revision)])
                .and_then([TxnOp::delete(key.clone(), None)]),
        ),
        // Moves a key to a new lease without changing its create revision (its place in line).
        Op::Reattach { key, mod_revision, value, lease } => (
            "reattach candidate key",
            Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, *mod_revision)]).and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(*lease)),
            )]),
        ),
    }
}

/// A handover as one transaction ([`crate::lock::plan_move`]): the keys ahead of the target are
/// deleted and recreated at the back of the line only if each is still the incarnation read,
/// each new name is free, and the target's key is still there. All or nothing.
pub fn move_txn(r: &Move) -> Txn {
    let (target, token) = &r.target;
    let mut when = vec![Compare::create_revision(target.clone(), CompareOp::Equal, *token)];
    let mut then = Vec::new();
    for op in &r.ops {
        match op {
            Op::Delete { key, create_revision } => {
                when.push(Compare::create_revision(key.clone(), CompareOp::Equal, *create_revision));
                then.push(TxnOp::delete(key.clone(), None));
            }
            Op::Create { key, value, lease } => {
                when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                then.push(TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(*lease))));
            }
            Op::Reattach { .. } => {} // never part of a move
        }
    }
    Txn::new().when(when).and_then(then)
}
