use std::sync::Arc;
use stm_store::{Error, Store};

#[test]
fn bank_smoke() {
    let store: Arc<Store<u32, i64>> = Arc::new(Store::new());
    const N: u32 = 8;
    let mut all = store.using(0..N).unwrap();
    for v in all.values_mut() {
        v.set(100);
    }
    all.commit().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut seed = t as u64 + 1;
                let mut ok = 0;
                let mut fail = 0;
                for _ in 0..20000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let a = (seed % N as u64) as u32;
                    let b = ((seed >> 8) % N as u64) as u32;
                    if t == 3 {
                        let snap = store.using(0..N).unwrap();
                        let total: i64 = snap.iter().map(|(_, v)| *v.value().unwrap()).sum();
                        assert_eq!(total, 100 * N as i64);
                        continue;
                    }
                    if a == b {
                        continue;
                    }
                    let mut c = store.using([a, b]).unwrap();
                    let x = *c[&a].value().unwrap();
                    let y = *c[&b].value().unwrap();
                    c[&a].set(x - 1);
                    c[&b].set(y + 1);
                    match c.commit() {
                        Ok(()) => ok += 1,
                        Err(Error::ConcurrentUpdate) => fail += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, fail)
            })
        })
        .collect();
    for t in threads {
        println!("{:?}", t.join().unwrap());
    }
    let total: i64 = store.dump().iter().map(|(_, _, v)| v.unwrap()).sum();
    assert_eq!(total, 100 * N as i64);
}
