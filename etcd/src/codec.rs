//! Keys to etcd key bytes and back, and values to etcd value bytes and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{show_key, Error};

/// How a key becomes the bytes of an etcd key (after the store's prefix) and back.
///
/// Implemented for `String`, the unsigned integers and `i64`/`i32`. Integers are big-endian
/// (signed ones with the sign bit flipped), so etcd's byte order is their numeric order;
/// strings are their UTF-8 bytes, whose byte order is `str`'s order. The store sorts what it
/// returns by `K: Ord` anyway, so a codec need not preserve order.
///
/// A codec may refuse a key; the call then answers [`Error::KeyCodec`] and writes nothing:
///
/// ```
/// use stm_store_etcd::{KeyCodec, KeyCodecError};
///
/// #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
/// struct Account(String);
///
/// impl KeyCodec for Account {
///     fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError> {
///         if self.0.is_empty() {
///             return Err(KeyCodecError::new("an account needs a name"));
///         }
///         Ok(self.0.as_bytes().to_vec())
///     }
///     fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError> {
///         String::decode_key(bytes).map(Account)
///     }
/// }
/// assert_eq!(Account("bob".into()).encode_key().unwrap(), b"bob");
/// assert!(Account(String::new()).encode_key().is_err());
/// ```
pub trait KeyCodec: Sized {
    /// The key's bytes.
    ///
    /// # Errors
    ///
    /// A [`KeyCodecError`] saying why this key cannot be stored.
    fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError>;

    /// The key back from its bytes.
    ///
    /// # Errors
    ///
    /// A [`KeyCodecError`] saying why these bytes are not a key.
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError>;
}

/// Why a [`KeyCodec`] refused a key or a key's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCodecError(String);

impl KeyCodecError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for KeyCodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyCodecError {}

impl KeyCodec for String {
    fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError> {
        Ok(self.as_bytes().to_vec())
    }

    fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| KeyCodecError::new(format!("key {} is not UTF-8: {e}", show_key(bytes))))
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl KeyCodec for $t {
            fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError> {
                Ok(self.to_be_bytes().to_vec())
            }

            fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError> {
                let bytes = bytes.try_into().map_err(|_| {
                    KeyCodecError::new(format!(
                        "key {} is not a {} ({} big-endian bytes)",
                        show_key(bytes),
                        stringify!($t),
                        std::mem::size_of::<$t>()
                    ))
                })?;
                Ok(<$t>::from_be_bytes(bytes))
            }
        }
    )*};
}

unsigned!(u8, u16, u32, u64, u128);

macro_rules! signed {
    ($($t:ty => $u:ty),*) => {$(
        impl KeyCodec for $t {
            fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError> {
                // Flipping the sign bit makes the byte order the numeric order.
                ((*self as $u) ^ (1 << (<$u>::BITS - 1))).encode_key()
            }

            fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError> {
                <$u>::decode_key(bytes)
                    .map(|u| (u ^ (1 << (<$u>::BITS - 1))) as $t)
                    .map_err(|_| {
                        KeyCodecError::new(format!(
                            "key {} is not a {} ({} big-endian bytes)",
                            show_key(bytes),
                            stringify!($t),
                            std::mem::size_of::<$t>()
                        ))
                    })
            }
        }
    )*};
}

signed!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

/// The first byte of a stored value: "no value" (`clear`, or a key created by a read).
const NO_VALUE: u8 = 2;
/// The first byte of a stored value: a CBOR document follows the version.
const CBOR: u8 = 3;
/// Tag byte, then the contract version (8 bytes, big-endian).
const HEADER: usize = 9;

/// The bytes etcd stores for version `version` of a key with `value` (`None`: "no value"):
/// a tag byte, the version (8 bytes, big-endian), then CBOR.
pub(crate) fn encode_value<V: Serialize>(
    key: &[u8],
    version: u64,
    value: Option<&V>,
) -> Result<Vec<u8>, Error> {
    let tag = if value.is_some() { CBOR } else { NO_VALUE };
    let mut bytes = Vec::with_capacity(HEADER + 8);
    bytes.push(tag);
    bytes.extend_from_slice(&version.to_be_bytes());
    if let Some(value) = value {
        ciborium::into_writer(value, &mut bytes).map_err(|e| Error::Encode {
            key: show_key(key),
            reason: e.to_string(),
        })?;
    }
    Ok(bytes)
}

/// The version and value stored in `bytes` under `key`; never panics.
pub(crate) fn decode_value<V: DeserializeOwned>(
    key: &[u8],
    bytes: &[u8],
) -> Result<(u64, Option<V>), Error> {
    let fail = |reason: String| Error::Decode {
        key: show_key(key),
        reason,
    };
    let (tag, version, mut rest) = match bytes {
        [tag @ (NO_VALUE | CBOR), version @ ..] if version.len() >= HEADER - 1 => {
            let (version, rest) = version.split_at(HEADER - 1);
            let version = u64::from_be_bytes(version.try_into().expect("8 bytes"));
            (*tag, version, rest)
        }
        [NO_VALUE | CBOR, short @ ..] => {
            return Err(fail(format!(
                "{} bytes after the tag, expected at least 8 (the version)",
                short.len()
            )))
        }
        [tag, ..] => {
            return Err(fail(format!(
                "unknown tag byte {tag:#04x} (expected 0x02 \"no value\" or 0x03 CBOR, then the \
                 version): not written by this version of stm-store-etcd"
            )))
        }
        [] => {
            return Err(fail(
                "empty value (expected a tag byte, the version, then CBOR): not written by \
                 stm-store-etcd"
                    .into(),
            ))
        }
    };
    if tag == NO_VALUE {
        return if rest.is_empty() {
            Ok((version, None))
        } else {
            Err(fail(format!(
                "{} bytes after a \"no value\" header",
                rest.len()
            )))
        };
    }
    let value = ciborium::from_reader(&mut rest)
        .map_err(|e| fail(format!("not a CBOR document of the expected type: {e}")))?;
    if rest.is_empty() {
        Ok((version, Some(value)))
    } else {
        Err(fail(format!(
            "{} bytes after the CBOR document",
            rest.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_keep_their_order_and_round_trip() {
        let signed = [i64::MIN, -300, -1, 0, 1, 255, i64::MAX];
        let bytes: Vec<_> = signed.iter().map(|k| k.encode_key().unwrap()).collect();
        assert!(bytes.windows(2).all(|w| w[0] < w[1]));
        for (k, b) in signed.iter().zip(&bytes) {
            assert_eq!(i64::decode_key(b).unwrap(), *k);
        }
        let unsigned = [0u32, 1, 256, u32::MAX];
        let bytes: Vec<_> = unsigned.iter().map(|k| k.encode_key().unwrap()).collect();
        assert!(bytes.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(u32::decode_key(&bytes[2]).unwrap(), 256);
        assert!(u32::decode_key(b"abc")
            .unwrap_err()
            .to_string()
            .contains("u32"));
        assert!(String::decode_key(&[0xff]).is_err());
    }

    #[test]
    fn values_round_trip_and_bad_bytes_are_errors() {
        let bytes = encode_value(b"k", 7, Some(&(7u8, "x".to_string()))).unwrap();
        assert_eq!(
            decode_value::<(u8, String)>(b"k", &bytes).unwrap(),
            (7, Some((7, "x".into())))
        );
        let none = encode_value::<i64>(b"k", u64::MAX, None).unwrap();
        assert_eq!(none.len(), HEADER);
        assert_eq!(decode_value::<i64>(b"k", &none).unwrap(), (u64::MAX, None));
        for bad in [
            &b""[..],
            b"\x02",
            b"\x02\0\0\0\0\0\0\0",
            b"\x02\0\0\0\0\0\0\0\0\0",
            b"\x03\0\0\0\0\0\0\0\x01",
            b"\x03\0\0\0\0\0\0\0\x01\x61",
            b"\x00",
            b"\x01\x01",
            b"hello",
        ] {
            let e = decode_value::<i64>(b"k", bad).unwrap_err();
            assert!(matches!(e, Error::Decode { .. }), "{bad:?}: {e}");
        }
        let mut trailing = encode_value(b"k", 1, Some(&1i64)).unwrap();
        trailing.push(0);
        assert!(decode_value::<i64>(b"k", &trailing).is_err());
        // A string where an integer is expected.
        let s = encode_value(b"k", 1, Some(&"ten")).unwrap();
        assert!(decode_value::<i64>(b"k", &s)
            .unwrap_err()
            .to_string()
            .contains("does not decode"));
    }
}
