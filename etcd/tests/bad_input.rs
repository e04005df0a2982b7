//! Bad input: each is a clear error (never a panic), and nothing is written.

mod common;

use std::time::Duration;

use common::{endpoints, etcd_keys, fresh_prefix, k, raw};
use etcd_client::Client;
use stm_store_etcd::blocking::EtcdStore;
use stm_store_etcd::{Error, KeyCodec, KeyCodecError, Options};

fn quick() -> Options {
    Options {
        budget: Duration::from_millis(600),
        request_timeout: Duration::from_millis(300),
        ..Options::default()
    }
}

/// Nothing listens at the endpoint: `connect` says so at once (connection refused), instead of
/// retrying for its budget. The budget here is an hour, so a `connect` that waited for it would
/// trip the liveness bound instead.
#[test]
fn a_refused_endpoint_is_a_connect_error_at_once() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let patient = Options {
        budget: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(5 * 3600),
        ..Options::default()
    };
    let (answer, answered) = std::sync::mpsc::channel();
    let at = endpoint.clone();
    std::thread::spawn(move || {
        let _ = answer.send(EtcdStore::<String, i64>::connect_with([&at], "x/", patient));
    });
    let e = match answered.recv_timeout(Duration::from_secs(60)) {
        Ok(connected) => connected.unwrap_err(),
        Err(_) => panic!("connect to a refused port waited for its budget instead of failing"),
    };
    let Error::Connect { endpoints, reason } = &e else {
        panic!("expected Error::Connect, got {e:?}")
    };
    assert_eq!(endpoints, std::slice::from_ref(&endpoint));
    assert!(reason.contains("connection refused"), "{reason}");
    let message = e.to_string();
    assert!(
        message.starts_with("cannot connect to etcd at"),
        "{message}"
    );
    assert!(message.contains(&endpoint), "{message}");
}

#[test]
fn malformed_endpoint_and_no_endpoint_are_connect_errors() {
    let e = EtcdStore::<String, i64>::connect_with(["http://[::1"], "x/", quick()).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    let none: [&str; 0] = [];
    let e = EtcdStore::<String, i64>::connect_with(none, "x/", quick()).unwrap_err();
    assert!(e.to_string().contains("no endpoints"), "{e}");
}

#[test]
fn a_value_written_by_someone_else_is_a_decode_error_and_nothing_is_written() {
    let prefix = fresh_prefix("foreign");
    let store = EtcdStore::<String, i64>::connect(endpoints(), prefix.clone()).unwrap();
    let key = format!("{prefix}k/bad");
    let wrong_type = format!("{prefix}k/text");
    raw(async |c: &mut Client| {
        c.put(key.as_str(), "hello", None).await.unwrap();
        // The store's own format (a tag, a version), but a string where an i64 is expected.
        let mut text = vec![3u8, 0, 0, 0, 0, 0, 0, 0, 1];
        ciborium::into_writer(&"ten", &mut text).unwrap();
        c.put(wrong_type.as_str(), text, None).await.unwrap();
    });
    let before = etcd_keys(&prefix);

    let e = store.usevar(k("bad")).unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("k/bad") && message.contains("does not decode"),
        "{message}"
    );
    // In a using with a new key: the new key is not created either.
    let e = store.using([k("new"), k("text")]).unwrap_err();
    assert!(e.to_string().contains("k/text"), "{e}");
    assert!(matches!(store.dump(), Err(Error::Decode { .. })));
    assert_eq!(etcd_keys(&prefix), before, "something was written");
}

/// Keys of one type whose codec refuses some of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Name(String);

impl KeyCodec for Name {
    fn encode_key(&self) -> Result<Vec<u8>, KeyCodecError> {
        if self.0.contains('/') {
            return Err(KeyCodecError::new(format!(
                "{:?}: a name has no '/'",
                self.0
            )));
        }
        Ok(self.0.as_bytes().to_vec())
    }

    fn decode_key(bytes: &[u8]) -> Result<Self, KeyCodecError> {
        String::decode_key(bytes).map(Name)
    }
}

#[test]
fn a_key_the_codec_refuses_is_a_key_codec_error_and_nothing_is_written() {
    let prefix = fresh_prefix("codec");
    let store = EtcdStore::<Name, i64>::connect(endpoints(), prefix.clone()).unwrap();
    let e = store.usevar(Name("a/b".into())).unwrap_err();
    assert!(matches!(e, Error::KeyCodec { .. }), "{e:?}");
    assert!(e.to_string().contains("a name has no '/'"), "{e}");
    let e = store
        .using([Name("fine".into()), Name("not/fine".into())])
        .unwrap_err();
    assert!(matches!(e, Error::KeyCodec { .. }), "{e:?}");
    assert_eq!(etcd_keys(&prefix), vec![], "something was written");
    assert_eq!(store.dump().unwrap(), vec![]);
}

#[test]
fn a_key_under_the_prefix_that_does_not_decode_is_a_key_codec_error() {
    let prefix = fresh_prefix("keys");
    let strings = EtcdStore::<String, i64>::connect(endpoints(), prefix.clone()).unwrap();
    strings.usevar(k("abc")).unwrap();
    let numbers = EtcdStore::<u64, i64>::connect(endpoints(), prefix.clone()).unwrap();
    let e = numbers.dump().unwrap_err();
    assert!(matches!(e, Error::KeyCodec { .. }), "{e:?}");
    assert!(
        e.to_string().contains("k/abc") && e.to_string().contains("u64"),
        "{e}"
    );
}

/// A value serde refuses to encode.
#[derive(Debug)]
struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Refuses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Refuses)
    }
}

#[test]
fn a_value_that_does_not_encode_is_an_encode_error_and_nothing_is_written() {
    let prefix = fresh_prefix("encode");
    let store = EtcdStore::<String, Refuses>::connect(endpoints(), prefix.clone()).unwrap();
    let mut c = store.using([k("a"), k("b")]).unwrap();
    let before = etcd_keys(&prefix);
    c["b"].set(Refuses);
    let e = c.commit().unwrap_err();
    assert!(matches!(e, Error::Encode { .. }), "{e:?}");
    assert!(e.to_string().contains("refuses to be encoded"), "{e}");
    assert_eq!(etcd_keys(&prefix), before, "something was written");
}

#[test]
fn too_many_keys_is_a_clear_error() {
    let store = common::etcd_store::<i64>("many");
    let e = store.using((0..200).map(|i| i.to_string())).unwrap_err();
    assert_eq!(
        e,
        Error::TooManyKeys {
            keys: 200,
            limit: 127
        }
    );
    assert_eq!(store.dump().unwrap(), vec![]);

    // A transaction that writes holds at most 125 keys (with its marker, and the floor's
    // compare and raise, in etcd's 128 operations); one that only reads, any number (it sends
    // no commit), prefetched or not.
    let keys: Vec<String> = (0..200).map(|i| format!("{i:03}")).collect();
    let e = store
        .transaction()
        .prefetch(keys.iter().take(126).cloned())
        .run(|tx| {
            for key in &keys[..126] {
                tx.set(key, 1)?;
            }
            Ok::<_, stm_store_etcd::TxError>(())
        })
        .unwrap_err();
    assert_eq!(
        e.error(),
        Some(&Error::TooManyKeys {
            keys: 126,
            limit: 125
        })
    );
    assert_eq!(store.dump().unwrap(), vec![], "nothing written");
    store
        .transaction()
        .prefetch(keys.iter().take(125).cloned())
        .run(|tx| {
            for key in &keys[..125] {
                tx.set(key, 1)?;
            }
            Ok::<_, stm_store_etcd::TxError>(())
        })
        .unwrap();
    let total = store
        .transaction()
        .prefetch(keys.iter().cloned())
        .run(|tx| {
            let mut total = 0;
            for key in &keys {
                total += tx.get(key)?.unwrap_or(0);
            }
            Ok::<_, stm_store_etcd::TxError>(total)
        })
        .unwrap();
    assert_eq!(total, 125);
}

/// The blocking API refuses to run inside an async runtime (it would block the runtime's
/// thread): it panics, before touching the network, with a message that says what to use.
#[tokio::test]
#[should_panic(expected = "called from inside an async runtime")]
async fn blocking_inside_a_runtime_panics() {
    let _ = EtcdStore::<String, i64>::connect(["127.0.0.1:1"], "x/");
}

/// The same refusal for a call on a store made outside the runtime.
#[test]
fn blocking_calls_inside_a_runtime_panic_with_a_clear_message() {
    let store = common::etcd_store::<i64>("inside");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async { store.usevar(k("a")).map(drop) })
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("blocking::EtcdStore::usevar called from inside an async runtime"),
        "{message}"
    );
    // The same call outside the runtime works.
    store.usevar(k("a")).unwrap();
}

/// The async API: the same calls, awaited.
#[tokio::test]
async fn async_api_round_trip() {
    let store = stm_store_etcd::EtcdStore::<String, Vec<String>>::connect(
        endpoints(),
        fresh_prefix("async"),
    )
    .await
    .unwrap();
    let mut c = store.using([k("a"), k("b")]).await.unwrap();
    c["a"].set(vec!["x".into()]);
    store.set_values(&mut c).await.unwrap();
    let mut b = store.usevar(k("b")).await.unwrap();
    b.set(vec![]);
    store.set(&mut b).await.unwrap();
    assert_eq!(
        store.dump().await.unwrap(),
        vec![
            (k("a"), 1, Some(vec!["x".to_string()])),
            (k("b"), 1, Some(vec![]))
        ]
    );
    c["a"].set(vec![]);
    assert_eq!(
        c.commit().await,
        Err(Error::Contract(stm_store::Error::ConcurrentUpdate))
    );
}

/// Stores are shared between threads; handles move between threads (and are `Sync` where
/// `K` and `V` are), as in the contract.
#[test]
fn stores_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<stm_store_etcd::EtcdStore<String, i64>>();
    send_sync::<stm_store_etcd::Value<'static, String, i64>>();
    send_sync::<stm_store_etcd::Collection<'static, String, i64>>();
    send_sync::<EtcdStore<String, i64>>();
    send_sync::<stm_store_etcd::blocking::Value<'static, String, i64>>();
    send_sync::<stm_store_etcd::blocking::Collection<'static, String, i64>>();
    send_sync::<Error>();
}

#[test]
fn a_lease_too_short_for_the_budget_is_refused_at_connect() {
    let options = Options {
        lease_ttl: Duration::from_secs(10),
        ..Options::default()
    };
    let e = EtcdStore::<String, i64>::connect_with(endpoints(), "x/", options).unwrap_err();
    assert!(e.to_string().contains("lease_ttl"), "{e}");
}
