//! The error type: the contract's two errors, plus the ones only a remote store can have.

use std::fmt;

/// What a call of this crate can answer instead of its result.
///
/// [`Error::Contract`] carries the contract's [`stm_store::Error`] with exactly its meaning
/// (`ConcurrentUpdate`: re-read and redo; `BusyRetry`: nothing was written, repeat the call).
/// The other variants are failures that an in-process store cannot have; none of them leaves
/// anything written.
///
/// ```
/// use stm_store_etcd::Error;
/// let e = Error::from(stm_store::Error::ConcurrentUpdate);
/// assert_eq!(e.contract(), Some(stm_store::Error::ConcurrentUpdate));
/// assert_eq!(e, stm_store::Error::ConcurrentUpdate);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// One of the contract's two errors, with the contract's meaning (see the crate docs for
    /// what `BusyRetry` means over etcd).
    Contract(stm_store::Error),
    /// A commit whose request reached etcd but whose answer was lost, and etcd did not answer
    /// again in time to tell: it may or may not have landed, and it may still land (until its
    /// marker's lease expires).
    ///
    /// From handles (after the call's budget): the handles are unchanged and remember the
    /// attempt: commit them again (without re-reading) and that call first finds out, exactly
    /// once, whether the attempt landed (`Ok`, the handles then hold what it wrote) or makes
    /// sure it never will (then it commits anew). Do not re-read and redo the work after this
    /// error: that could apply it twice.
    ///
    /// From a transaction (after trying for half the lease's time to live, or until its
    /// deadline): nothing can settle it any more; it landed at most once. Read what it would
    /// have written before running it again.
    OutcomeUnknown,
    /// A commit in doubt ([`Error::OutcomeUnknown`]) was repeated after its marker's lease
    /// expired (see [`Options::lease_ttl`](crate::Options)): it can no longer land, but whether
    /// it did cannot be told any more. The handles forget the attempt.
    OutcomeLost,
    /// [`EtcdStore::connect`](crate::EtcdStore::connect) could not reach etcd at the
    /// endpoints within its budget, or an endpoint is malformed.
    Connect {
        /// The endpoints, as given.
        endpoints: Vec<String>,
        /// What went wrong.
        reason: String,
    },
    /// A value stored in etcd does not decode as `V` (written by someone else, or by another
    /// version of the program with another `V`). Nothing was written.
    Decode {
        /// The etcd key, printed with non-printable bytes escaped.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A value could not be encoded (serde refused it). Nothing was written.
    Encode {
        /// The etcd key, printed with non-printable bytes escaped.
        key: String,
        /// Why it could not be encoded.
        reason: String,
    },
    /// A key could not be encoded, or a key under the prefix does not decode, with the
    /// store's [`KeyCodec`](crate::KeyCodec). Nothing was written.
    KeyCodec {
        /// What the codec said.
        reason: String,
    },
    /// More keys in one `using` or commit than etcd accepts in one transaction
    /// (`--max-txn-ops`, 128 by default; a commit also needs one operation for its marker).
    TooManyKeys {
        /// Keys asked for.
        keys: usize,
        /// The most this store puts in one transaction ([`Options::max_txn_ops`](crate::Options)).
        limit: usize,
    },
    /// etcd refused the request for a reason retrying cannot fix (permission denied, request
    /// too large, ...). Nothing was written.
    Etcd {
        /// etcd's answer.
        reason: String,
    },
}

impl Error {
    /// The contract's error, if this is one.
    pub fn contract(&self) -> Option<stm_store::Error> {
        match self {
            Error::Contract(e) => Some(*e),
            _ => None,
        }
    }
}

impl From<stm_store::Error> for Error {
    fn from(e: stm_store::Error) -> Self {
        Error::Contract(e)
    }
}

impl PartialEq<stm_store::Error> for Error {
    fn eq(&self, other: &stm_store::Error) -> bool {
        self.contract() == Some(*other)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Contract(e) => e.fmt(f),
            Error::OutcomeUnknown => f.write_str(
                "commit outcome unknown: etcd did not answer within the call's budget after the \
                 request went out; commit the same handles again to resolve it (do not re-read \
                 and redo)",
            ),
            Error::OutcomeLost => f.write_str(
                "commit outcome lost: a commit in doubt was repeated after its marker's lease \
                 expired; it can no longer land, but whether it did is unknown",
            ),
            Error::Connect { endpoints, reason } => {
                write!(f, "cannot connect to etcd at {endpoints:?}: {reason}")
            }
            Error::Decode { key, reason } => {
                write!(f, "the value of etcd key {key} does not decode: {reason}")
            }
            Error::Encode { key, reason } => {
                write!(
                    f,
                    "the value for etcd key {key} cannot be encoded: {reason}"
                )
            }
            Error::KeyCodec { reason } => write!(f, "key codec: {reason}"),
            Error::TooManyKeys { keys, limit } => write!(
                f,
                "{keys} keys in one transaction; this store puts at most {limit} operations in \
                 one etcd transaction (etcd's --max-txn-ops)"
            ),
            Error::Etcd { reason } => write!(f, "etcd refused the request: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// Prints an etcd key for an error message: UTF-8 text as is, other bytes escaped.
pub(crate) fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}
