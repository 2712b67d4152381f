//! storebench: redb vs SQLite (rusqlite, bundled) for wsroom's durable per-room key-value data.
//!
//! Key = (project ~10 B, key ~16 B), value = bytes. One transaction per commit, durable commits.
//! Usage (store = redb | sqlite-full | sqlite-normal | sqlite-full-excl (+ locking_mode=EXCLUSIVE)):
//!   storebench bench   <store> <file> <round>  load 100k keys, then 1-write latency, group commits, reads
//!   storebench open    <store> <file>          time opening an existing file (+ first get), count keys
//!   storebench crash   <store> <file>          commit 1-write txns forever (to be killed with SIGKILL)
//!   storebench hold    <store> <file> <secs>   open, write, hold the file open for <secs>, write again
//!   storebench tryopen <store> <file>          open (create), write one key, count; print every error
//!   storebench fill    <store> <file> <ballast> fill the disk until a commit fails, then check the data

use std::error::Error;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;
type Key = (String, String);
type Write = (String, String, Vec<u8>);

const TABLE: redb::TableDefinition<(&str, &str), &[u8]> = redb::TableDefinition::new("kv");
const PROJECTS: usize = 100;
const KEYS_PER_PROJECT: usize = 1000; // 100 x 1000 = 100k keys

fn project(i: usize) -> String {
    format!("proj-{i:05}") // 10 bytes
}
fn key(i: usize) -> String {
    format!("key-{i:012}") // 16 bytes
}
fn value(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize + i) as u8).collect()
}

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) % n as u64) as usize
    }
}

// ---------------------------------------------------------------- the two stores

trait Store {
    /// One durable transaction holding all `writes` (insert or replace).
    fn commit(&mut self, writes: &[Write]) -> Res<()>;
    fn delete(&mut self, keys: &[Key]) -> Res<()>;
    /// Gets inside one read transaction; returns total value bytes read.
    fn gets(&self, keys: &[Key]) -> Res<usize>;
    /// Each get in its own read transaction.
    fn get_own_txn(&self, k: &Key) -> Res<Option<Vec<u8>>>;
    /// All keys of one project, in key order; returns (count, bytes).
    fn scan(&self, project: &str) -> Res<(usize, usize)>;
    fn count(&self) -> Res<usize>;
    fn close(self: Box<Self>) -> Res<()>;
}

struct Redb(redb::Database);

impl Store for Redb {
    fn commit(&mut self, writes: &[Write]) -> Res<()> {
        let tx = self.0.begin_write()?; // Durability::Immediate is the default
        {
            let mut t = tx.open_table(TABLE)?;
            for (p, k, v) in writes {
                t.insert((p.as_str(), k.as_str()), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn delete(&mut self, keys: &[Key]) -> Res<()> {
        let tx = self.0.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (p, k) in keys {
                t.remove((p.as_str(), k.as_str()))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn gets(&self, keys: &[Key]) -> Res<usize> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut n = 0;
        for (p, k) in keys {
            n += t
                .get((p.as_str(), k.as_str()))?
                .map_or(0, |v| v.value().len());
        }
        Ok(n)
    }
    fn get_own_txn(&self, (p, k): &Key) -> Res<Option<Vec<u8>>> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        Ok(t.get((p.as_str(), k.as_str()))?.map(|v| v.value().to_vec()))
    }
    fn scan(&self, p: &str) -> Res<(usize, usize)> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let end = format!("{p}\0"); // (p, *) < (p\0, "")
        let (mut n, mut bytes) = (0, 0);
        for row in t.range((p, "")..(end.as_str(), ""))? {
            let (_, v) = row?;
            n += 1;
            bytes += v.value().len();
        }
        Ok((n, bytes))
    }
    fn count(&self) -> Res<usize> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let tx = self.0.begin_read()?;
        Ok(tx.open_table(TABLE)?.len()? as usize)
    }
    fn close(self: Box<Self>) -> Res<()> {
        self.0.close()?;
        Ok(())
    }
}

struct Sqlite(rusqlite::Connection);

impl Store for Sqlite {
    fn commit(&mut self, writes: &[Write]) -> Res<()> {
        let tx = self.0.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO kv(project, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (p, k, v) in writes {
                st.execute(rusqlite::params![p, k, v])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn delete(&mut self, keys: &[Key]) -> Res<()> {
        let tx = self.0.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM kv WHERE project = ?1 AND key = ?2")?;
            for (p, k) in keys {
                st.execute(rusqlite::params![p, k])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn gets(&self, keys: &[Key]) -> Res<usize> {
        let tx = self.0.unchecked_transaction()?; // one read snapshot, like redb's
        let mut n = 0;
        {
            let mut st =
                tx.prepare_cached("SELECT value FROM kv WHERE project = ?1 AND key = ?2")?;
            for (p, k) in keys {
                let mut rows = st.query(rusqlite::params![p, k])?;
                if let Some(row) = rows.next()? {
                    n += row.get_ref(0)?.as_blob()?.len();
                }
            }
        }
        tx.commit()?;
        Ok(n)
    }
    fn get_own_txn(&self, (p, k): &Key) -> Res<Option<Vec<u8>>> {
        let mut st = self
            .0
            .prepare_cached("SELECT value FROM kv WHERE project = ?1 AND key = ?2")?;
        let mut rows = st.query(rusqlite::params![p, k])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }
    fn scan(&self, p: &str) -> Res<(usize, usize)> {
        let mut st = self
            .0
            .prepare_cached("SELECT key, value FROM kv WHERE project = ?1 ORDER BY key")?;
        let mut rows = st.query([p])?;
        let (mut n, mut bytes) = (0, 0);
        while let Some(row) = rows.next()? {
            n += 1;
            bytes += row.get_ref(1)?.as_blob()?.len();
        }
        Ok((n, bytes))
    }
    fn count(&self) -> Res<usize> {
        Ok(self
            .0
            .query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))? as usize)
    }
    fn close(self: Box<Self>) -> Res<()> {
        self.0.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}

/// Opens (creating if `create`) the store; for SQLite this also runs the pragmas and the schema.
fn open(store: &str, path: &str, create: bool) -> Res<Box<dyn Store>> {
    match store {
        "redb" => {
            let db = if create {
                redb::Database::create(path)?
            } else {
                redb::Database::open(path)?
            };
            Ok(Box::new(Redb(db)))
        }
        "sqlite-full" | "sqlite-normal" | "sqlite-full-excl" => {
            use rusqlite::OpenFlags as F;
            let mut flags =
                F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX | F::SQLITE_OPEN_URI;
            if create {
                flags |= F::SQLITE_OPEN_CREATE;
            }
            let c = rusqlite::Connection::open_with_flags(path, flags)?;
            if store.ends_with("-excl") {
                // Hold the file lock for the connection's life; the WAL index lives in the heap, no -shm.
                c.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
            }
            let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            assert_eq!(mode, "wal");
            let sync = if store.starts_with("sqlite-full") {
                "FULL"
            } else {
                "NORMAL"
            };
            c.pragma_update(None, "synchronous", sync)?;
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv(project TEXT, key TEXT, value BLOB, \
                 PRIMARY KEY(project, key)) WITHOUT ROWID",
            )?;
            Ok(Box::new(Sqlite(c)))
        }
        _ => Err(format!("unknown store {store}").into()),
    }
}

// ---------------------------------------------------------------- measurements

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// "p50_us=.. p99_us=.. max_us=.." of a set of latencies.
fn pct(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: usize| us(v[(v.len() * q / 100).min(v.len() - 1)]);
    format!(
        "p50_us={:.0} p99_us={:.0} max_us={:.0}",
        at(50),
        at(99),
        us(*v.last().unwrap())
    )
}

fn bench(store: &str, path: &str, round: &str) -> Res<()> {
    let tag = format!("RESULT store={store} round={round}");
    let mut rng = Rng(0x9E3779B97F4A7C15 ^ round.len() as u64);
    let mut db = open(store, path, true)?;

    // Load 100 projects x 1000 keys, one transaction of 1000 writes per project.
    let t = Instant::now();
    for p in 0..PROJECTS {
        let batch: Vec<Write> = (0..KEYS_PER_PROJECT)
            .map(|k| (project(p), key(k), value((p * k) as u64, 100)))
            .collect();
        db.commit(&batch)?;
    }
    println!("{tag} test=load100k secs={:.2}", t.elapsed().as_secs_f64());

    // Random updates of existing keys, `size` writes per transaction, over the 100 projects.
    let mut commits = |db: &mut Box<dyn Store>, size: usize, n: usize| -> Res<()> {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let batch: Vec<Write> = (0..size)
                .map(|_| {
                    (
                        project(rng.below(PROJECTS)),
                        key(rng.below(KEYS_PER_PROJECT)),
                        value(i as u64, 100),
                    )
                })
                .collect();
            let c = Instant::now();
            db.commit(&batch)?;
            lat.push(c.elapsed());
        }
        let rate = n as f64 / lat.iter().sum::<Duration>().as_secs_f64(); // time inside commits
        println!(
            "{tag} test=commit{size} n={n} commits_s={rate:.0} writes_s={:.0} {}",
            rate * size as f64,
            pct(lat)
        );
        Ok(())
    };
    commits(&mut db, 1, 2000)?;
    commits(&mut db, 10, 1000)?;
    commits(&mut db, 100, 300)?;
    commits(&mut db, 1000, 100)?;

    // Point reads of random existing keys: warm-up, then timed.
    let keys: Vec<Key> = (0..1_000_000)
        .map(|_| {
            (
                project(rng.below(PROJECTS)),
                key(rng.below(KEYS_PER_PROJECT)),
            )
        })
        .collect();
    db.gets(&keys[..200_000])?; // warm-up
    let t = Instant::now();
    let bytes = db.gets(&keys)?;
    assert_eq!(bytes, keys.len() * 100);
    println!(
        "{tag} test=get_one_txn ns_per_get={:.0}",
        t.elapsed().as_nanos() as f64 / keys.len() as f64
    );
    let t = Instant::now();
    for k in &keys[..200_000] {
        db.get_own_txn(k)?.ok_or("missing key")?;
    }
    println!(
        "{tag} test=get_own_txn ns_per_get={:.0}",
        t.elapsed().as_nanos() as f64 / 200_000.0
    );

    // Prefix scan of one project's 1000 keys; each project once after a warm-up pass.
    for p in 0..PROJECTS {
        db.scan(&project(p))?;
    }
    let mut lat = Vec::new();
    for p in 0..PROJECTS {
        let t = Instant::now();
        let (n, _) = db.scan(&project(p))?;
        lat.push(t.elapsed());
        assert_eq!(n, KEYS_PER_PROJECT);
    }
    println!("{tag} test=scan1000 {}", pct(lat));
    db.close()?;
    Ok(())
}

fn open_time(store: &str, path: &str) -> Res<()> {
    let t = Instant::now();
    let db = open(store, path, false)?;
    let t_open = t.elapsed();
    let v = db.get_own_txn(&(project(7), key(7)))?;
    let t_get = t.elapsed();
    let n = db.count()?;
    println!(
        "RESULT store={store} test=open open_us={:.0} open_plus_first_get_us={:.0} found={} keys={n}",
        us(t_open),
        us(t_get),
        v.is_some()
    );
    Ok(())
}

fn crash(store: &str, path: &str) -> Res<()> {
    let mut db = open(store, path, false)?;
    println!("CRASHLOOP started");
    for i in 0.. {
        db.commit(&[(
            project(i % PROJECTS),
            key(i % KEYS_PER_PROJECT),
            value(i as u64, 100),
        )])?;
    }
    Ok(())
}

fn hold(store: &str, path: &str, secs: u64) -> Res<()> {
    let mut db = open(store, path, true)?;
    db.commit(&[(project(0), key(0), value(1, 100))])?;
    println!("HOLDING {store} {path} (pid {})", std::process::id());
    std::thread::sleep(Duration::from_secs(secs));
    println!(
        "holder: write after the other process: {:?}",
        db.commit(&[(project(0), key(1), value(2, 100))])
    );
    println!("holder: count: {:?}", db.count());
    Ok(())
}

fn tryopen(store: &str, path: &str) {
    match open(store, path, true) {
        Err(e) => {
            println!("open: ERROR {e}  [{e:?}]");
            if store == "redb" {
                let ro = redb::Builder::new().open_read_only(path);
                println!("open_read_only: {:?}", ro.map(|_| "ok"));
            }
        }
        Ok(mut db) => {
            println!("open: ok");
            match db.commit(&[(project(0), key(2), value(3, 100))]) {
                Ok(()) => println!("write: ok"),
                Err(e) => println!("write: ERROR {e}  [{e:?}]"),
            }
            println!("count: {:?}", db.count().map_err(|e| e.to_string()));
        }
    }
}

/// Commits 50 x 1000-byte values per transaction until a commit fails, then checks what survived,
/// first without freeing space, then after deleting the ballast file.
fn fill(store: &str, path: &str, ballast: &str) -> Res<()> {
    let batch = |i: usize| -> Vec<Write> {
        (i * 50..i * 50 + 50)
            .map(|k| ("fill".to_string(), key(k), value(k as u64, 1000)))
            .collect()
    };
    let verify = |db: &dyn Store, committed: usize, deleted: usize| -> String {
        let count = db.count().map_err(|e| e.to_string());
        let mut bad = 0;
        for k in deleted..committed {
            match db.get_own_txn(&("fill".to_string(), key(k))) {
                Ok(Some(v)) if v == value(k as u64, 1000) => {}
                _ => bad += 1,
            }
        }
        format!(
            "count={count:?} expected={} missing_or_wrong={bad}",
            committed - deleted
        )
    };

    let mut db = open(store, path, true)?;
    let mut committed = 0;
    for i in 0.. {
        match db.commit(&batch(i)) {
            Ok(()) => committed += 50,
            Err(e) => {
                println!("commit #{i} FAILED after {committed} keys: {e}  [{e:?}]");
                break;
            }
        }
    }
    let r = db.commit(&[("x".into(), "y".into(), vec![1])]);
    println!(
        "small write after failure: {:?}",
        r.map_err(|e| e.to_string())
    );
    let first: Vec<Key> = (0..50).map(|k| ("fill".to_string(), key(k))).collect();
    let del = db.delete(&first);
    println!(
        "delete 50 keys on the full disk: {:?}",
        del.as_ref().map_err(|e| e.to_string())
    );
    let mut deleted = if del.is_ok() { 50 } else { 0 };
    println!("same handle: {}", verify(db.as_ref(), committed, deleted));
    println!("close: {:?}", db.close().map_err(|e| e.to_string()));

    match open(store, path, false) {
        Ok(mut db) => {
            println!(
                "reopen on the full disk: ok, {}",
                verify(db.as_ref(), committed, deleted)
            );
            if deleted == 0 {
                let del = db.delete(&first);
                println!(
                    "delete 50 keys after reopen: {:?}",
                    del.as_ref().map_err(|e| e.to_string())
                );
                deleted = if del.is_ok() { 50 } else { 0 };
                let r = db.commit(&[("x".into(), "y".into(), vec![1])]);
                println!("small write after that: {:?}", r.map_err(|e| e.to_string()));
                println!("same handle: {}", verify(db.as_ref(), committed, deleted));
            }
            println!("close: {:?}", db.close().map_err(|e| e.to_string()));
        }
        Err(e) => println!("reopen on the full disk: ERROR {e}  [{e:?}]"),
    }
    std::fs::remove_file(ballast)?;
    println!("ballast deleted");
    let mut db = open(store, path, false)?;
    println!(
        "reopen after freeing space: ok, {}",
        verify(db.as_ref(), committed, deleted)
    );
    println!(
        "write after freeing space: {:?}",
        db.commit(&batch(100_000)).map_err(|e| e.to_string())
    );
    db.close()?;
    Ok(())
}

fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        a.get(i)
            .map(String::as_str)
            .ok_or("missing argument (see the doc comment)")
    };
    match arg(1)? {
        "bench" => bench(arg(2)?, arg(3)?, arg(4)?),
        "open" => open_time(arg(2)?, arg(3)?),
        "crash" => crash(arg(2)?, arg(3)?),
        "hold" => hold(arg(2)?, arg(3)?, arg(4)?.parse()?),
        "tryopen" => Ok(tryopen(arg(2)?, arg(3)?)),
        "fill" => fill(arg(2)?, arg(3)?, arg(4)?),
        other => Err(format!("unknown command {other}").into()),
    }
}
