use std::fmt;

/// Why a commit did not land. In both cases nothing was written and the handles are unchanged.
///
/// ```
/// use stm_store::{Error, Store};
///
/// let store = Store::new();
/// let mut mine = store.usevar("greeting")?;
/// let mut theirs = store.usevar("greeting")?;
/// theirs.set("hello");
/// theirs.commit()?;
///
/// mine.set("hi");
/// assert_eq!(mine.commit(), Err(Error::ConcurrentUpdate));
/// // Re-read and redo the work:
/// let mut mine = store.usevar("greeting")?;
/// mine.set("hi");
/// mine.commit()?;
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The call gave up within its own bounded retry budget; the same call may simply be
    /// repeated. This implementation never returns it (its commits and snapshots help each
    /// other to completion instead of giving up); it stays part of the contract, so handle it
    /// as "retry".
    BusyRetry,
    /// Some key of the commit had been committed by someone else since it was read. Committing
    /// the same handles again fails again: re-read (`usevar`/`using`) and redo the work.
    ConcurrentUpdate,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::BusyRetry => "the store was busy: retry the same call",
            Error::ConcurrentUpdate => {
                "a key was committed by someone else since it was read: re-read and redo"
            }
        })
    }
}

impl std::error::Error for Error {}
