//! How many sockets each user holds open on this node, so that one user cannot take a node's
//! connections for themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use switchboard_schemas::UserId;

#[derive(Clone, Default)]
pub struct UserSockets(Arc<Mutex<HashMap<UserId, usize>>>);

/// One user's place for one socket, held until the socket closes.
pub struct Slot {
    sockets: UserSockets,
    user: UserId,
}

impl UserSockets {
    /// A place for another socket of `user`, unless they hold `max` already.
    pub fn take(&self, user: UserId, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot { sockets: self.clone(), user })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sockets.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_max_sockets_and_a_closed_one_frees_its_place() {
        let sockets = UserSockets::default();
        let (ada, bob) = (UserId(1), UserId(2));
        let first = sockets.take(ada, 2).expect("first");
        let _second = sockets.take(ada, 2).expect("second");
        assert!(sockets.take(ada, 2).is_none(), "a third is refused");
        assert!(sockets.take(bob, 2).is_some(), "other users are not affected");
        drop(first);
        assert!(sockets.take(ada, 2).is_some(), "a closed socket frees its place");
    }
}
