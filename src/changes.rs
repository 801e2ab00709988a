//! What Watch streams hear: every change that can alter a validation, told
//! the moment the validation cache is (by this process's own changes, and
//! by the change feed for every other replica's), broadcast to every open
//! stream. Each stream reads at its own pace within a bounded backlog; one
//! that falls further behind is told to resync, never left with a gap.

use std::sync::RwLock;

use tokio::sync::broadcast;

use crate::model::TokenId;

/// Events a stream may fall behind by before it is told to resync
/// (`--watch-backlog`).
pub const DEFAULT_BACKLOG: usize = 4096;

/// One thing a stream hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// This token changed or went: whatever a client holds of it is stale.
    Changed(TokenId),
    /// Changes may have been missed (the feed was lost, or a payload was
    /// unreadable): everything a client holds is stale.
    Resync,
}

/// The broadcast itself. Sending costs a lock and a copy per change, and
/// nothing when no stream is open.
pub struct Changes {
    /// Behind a lock only so the service can size the backlog once, at
    /// start, after the store made its cache (see [`Changes::set_backlog`]).
    sender: RwLock<broadcast::Sender<Heard>>,
}

impl Changes {
    pub fn new(backlog: usize) -> Changes {
        let (sender, _) = broadcast::channel(backlog.max(1));
        Changes {
            sender: RwLock::new(sender),
        }
    }

    /// A new backlog for streams opened from now on; those open keep theirs
    /// (and hear nothing more: they are told to resync).
    pub fn set_backlog(&self, backlog: usize) {
        let (sender, _) = broadcast::channel(backlog.max(1));
        let old = std::mem::replace(
            &mut *self.sender.write().unwrap_or_else(|e| e.into_inner()),
            sender,
        );
        let _ = old.send(Heard::Resync);
    }

    fn send(&self, heard: Heard) {
        // No stream open: nobody to tell.
        let _ = self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .send(heard);
    }

    pub fn changed(&self, id: TokenId) {
        self.send(Heard::Changed(id));
    }

    pub fn resync(&self) {
        self.send(Heard::Resync);
    }

    /// Everything told from now on (a stream subscribes before it says it
    /// is in sync, so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe()
    }
}

impl Default for Changes {
    fn default() -> Changes {
        Changes::new(DEFAULT_BACKLOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_hears_what_came_after_it_and_a_laggard_is_told() {
        let changes = Changes::new(2);
        let before = TokenId::parse(1).unwrap();
        changes.changed(before);
        let mut stream = changes.subscribe();
        let id = TokenId::parse(7).unwrap();
        changes.changed(id);
        assert_eq!(stream.recv().await.unwrap(), Heard::Changed(id));
        for _ in 0..3 {
            changes.changed(id);
        }
        assert!(matches!(
            stream.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
        // What the backlog kept is still there: only the overflow is lost.
        assert_eq!(stream.try_recv().unwrap(), Heard::Changed(id));
        assert_eq!(stream.try_recv().unwrap(), Heard::Changed(id));
        changes.resync();
        assert_eq!(stream.try_recv().unwrap(), Heard::Resync);
    }
}
