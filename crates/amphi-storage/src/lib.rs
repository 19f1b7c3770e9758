//! Where recordings live. A [`Storage`] holds whole objects under
//! `/`-separated keys (`<space>/frames/<seq>.amfs`, `<space>/recording.opus`,
//! …); a `put` returns once the object is durable.
//!
//! - [`LocalDir`] (the default): files under a directory, each written to a
//!   temporary file, fsynced, renamed into place and the directory fsynced.
//! - [`ObjectStorage`]: S3-compatible object storage through the
//!   `object_store` crate (`--recordings-url s3://bucket/prefix`, credentials
//!   and endpoint from the usual `AWS_*` variables). A `put` is one PUT:
//!   durable when S3 answers. Shared by every node, it lets a node that
//!   takes over a space continue the same recording.
//!
//! The API is blocking: the recorder is a thread of its own, and the HTTP
//! side calls it from `spawn_blocking`. The object store runs its requests
//! on a small runtime of its own.

use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::ClientConfigKey;
pub use object_store::aws::AmazonS3Builder;
use object_store::aws::AmazonS3ConfigKey;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// A place for whole objects.
pub trait Storage: Send + Sync + 'static {
    /// Stores `data` at `key`, durably, replacing what was there.
    fn put(&self, key: &str, data: Bytes) -> io::Result<()>;
    /// The object at `key`, if any.
    fn get(&self, key: &str) -> io::Result<Option<Bytes>>;
    /// Bytes `range` of the object at `key`, if it exists; the range must
    /// lie within the object (see [`Storage::size`]).
    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Option<Bytes>>;
    /// The size in bytes of the object at `key`, if it exists.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// The keys under `prefix` (a `/`-ended folder), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> io::Result<bool>;
    /// Where the objects are, for logs.
    fn describe(&self) -> String;
    /// Stores many objects at once (a replay's segments): in parallel
    /// where the storage allows it. Each is durable when this returns.
    fn put_many(&self, objects: Vec<(String, Bytes)>) -> io::Result<()> {
        objects.into_iter().try_for_each(|(k, v)| self.put(&k, v))
    }
    /// Reads many objects at once (a recording's frame segments), in the
    /// order of `keys`: in parallel where the storage allows it.
    fn get_many(&self, keys: &[String]) -> io::Result<Vec<Option<Bytes>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Whether each of `keys` exists (a restarted node's replays): in
    /// parallel where the storage allows it.
    fn exists_many(&self, keys: &[String]) -> io::Result<Vec<bool>> {
        keys.iter().map(|k| self.exists(k)).collect()
    }
}

impl std::fmt::Debug for dyn Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.describe())
    }
}

/// Opens the storage named by `url` (`s3://bucket[/prefix]`), or the local
/// directory `local` without one.
pub fn open(url: Option<&str>, local: &Path) -> io::Result<Arc<dyn Storage>> {
    match url {
        None => Ok(Arc::new(LocalDir::new(local)?)),
        Some(url) => Ok(Arc::new(ObjectStorage::from_url(url)?)),
    }
}

fn check_key(key: &str) -> io::Result<()> {
    let ok = !key.is_empty()
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad storage key {key:?}"),
        ))
    }
}

/// Objects as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(LocalDir {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Writes `data` to `path` atomically and durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Storage for LocalDir {
    fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        write_durable(&self.path(key)?, &data)
    }

    fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        match fs::read(self.path(key)?) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Option<Bytes>> {
        use std::os::unix::fs::FileExt;
        let f = match fs::File::open(self.path(key)?) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too long"))?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, range.start)?;
        Ok(Some(Bytes::from(buf)))
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(key)?) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut keys: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".tmp"))
            .map(|n| format!("{}/{n}", prefix.trim_end_matches('/')))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        Ok(self.path(key)?.exists())
    }

    fn put_many(&self, objects: Vec<(String, Bytes)>) -> io::Result<()> {
        // Everything written first, then synced: the kernel writes the
        // files back together, so a replay's thousands of segments do not
        // pay one disk round trip each.
        let mut dirs = std::collections::BTreeSet::new();
        let mut files = Vec::with_capacity(objects.len());
        for (key, data) in &objects {
            let path = self.path(key)?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
                dirs.insert(dir.to_path_buf());
            }
            let mut f = fs::File::create(&path)?;
            f.write_all(data)?;
            files.push(f);
        }
        for f in files {
            f.sync_data()?;
        }
        for dir in dirs {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Objects in S3-compatible storage.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: tokio::runtime::Runtime,
}

fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

impl ObjectStorage {
    /// `s3://bucket[/prefix]`; the rest of the configuration (region,
    /// endpoint, credentials, `AWS_ALLOW_HTTP`) comes from the environment.
    pub fn from_url(url: &str) -> io::Result<Self> {
        Self::from_url_with(url, AmazonS3Builder::from_env())
    }

    /// [`ObjectStorage::from_url`] configured by `builder` instead of the
    /// environment (the bucket comes from `url`).
    pub fn from_url_with(url: &str, builder: AmazonS3Builder) -> io::Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("recordings URL {url:?}: only s3://bucket/prefix is supported"),
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the recordings URL names no bucket",
            ));
        }
        let mut builder = builder
            .with_bucket_name(bucket)
            // A short blip is retried over (0.1 s, 0.2 s, … up to 2 s
            // apart); a store that does not answer fails a request within
            // seconds (the defaults retry for up to 3 minutes): the recorder thread
            // moves on, counting the lost segment, instead of falling
            // minutes behind. AWS_TIMEOUT / AWS_CONNECT_TIMEOUT override.
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(10),
            });
        for (var, key, default) in [
            ("AWS_TIMEOUT", ClientConfigKey::Timeout, "10s"),
            ("AWS_CONNECT_TIMEOUT", ClientConfigKey::ConnectTimeout, "3s"),
        ] {
            if std::env::var_os(var).is_none() {
                builder = builder.with_config(AmazonS3ConfigKey::Client(key), default);
            }
        }
        let store = builder.build().map_err(to_io)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("amphi-storage")
            .enable_all()
            .build()?;
        Ok(ObjectStorage {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
            rt,
        })
    }

    fn path(&self, key: &str) -> io::Result<ObjectPath> {
        check_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(full).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn key_of(&self, path: &ObjectPath) -> String {
        let p = path.as_ref();
        match self.prefix.is_empty() {
            true => p.to_owned(),
            false => p
                .strip_prefix(&self.prefix)
                .map_or(p, |r| r.trim_start_matches('/'))
                .to_owned(),
        }
    }
}

impl ObjectStorage {
    /// Runs a request on the storage's own runtime and waits for it; from
    /// inside the server's runtime the wait lets that runtime move its
    /// other tasks to other threads (`block_in_place`).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = move || {
            rx.recv()
                .unwrap_or_else(|_| Err(io::Error::other("the storage runtime stopped")))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Storage for ObjectStorage {
    fn put(&self, key: &str, data: Bytes) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        self.run(async move {
            store
                .put(&path, data.into())
                .await
                .map(|_| ())
                .map_err(to_io)
        })
    }

    fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        self.run(async move {
            match store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some).map_err(to_io),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Option<Bytes>> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        self.run(async move {
            match store.get_range(&path, range).await {
                Ok(b) => Ok(Some(b)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        self.run(async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (store, path) = (self.store.clone(), self.path(prefix.trim_end_matches('/'))?);
        let metas: Vec<object_store::ObjectMeta> =
            self.run(async move { store.list(Some(&path)).try_collect().await.map_err(to_io) })?;
        let mut keys: Vec<String> = metas.iter().map(|m| self.key_of(&m.location)).collect();
        keys.sort();
        Ok(keys)
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        let (store, path) = (self.store.clone(), self.path(key)?);
        self.run(async move {
            match store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn exists_many(&self, keys: &[String]) -> io::Result<Vec<bool>> {
        use futures_util::StreamExt;
        let paths = keys
            .iter()
            .map(|k| self.path(k))
            .collect::<io::Result<Vec<_>>>()?;
        let store = self.store.clone();
        self.run(async move {
            futures_util::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move {
                        match store.head(&path).await {
                            Ok(_) => Ok(true),
                            Err(object_store::Error::NotFound { .. }) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(Self::PARALLEL)
                .try_collect::<Vec<_>>()
                .await
                .map_err(to_io)
        })
    }

    fn get_many(&self, keys: &[String]) -> io::Result<Vec<Option<Bytes>>> {
        use futures_util::StreamExt;
        let paths = keys
            .iter()
            .map(|k| self.path(k))
            .collect::<io::Result<Vec<_>>>()?;
        let store = self.store.clone();
        self.run(async move {
            futures_util::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move {
                        match store.get(&path).await {
                            Ok(r) => r.bytes().await.map(Some),
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(Self::PARALLEL)
                .try_collect::<Vec<_>>()
                .await
                .map_err(to_io)
        })
    }

    fn put_many(&self, objects: Vec<(String, Bytes)>) -> io::Result<()> {
        use futures_util::StreamExt;
        let puts = objects
            .into_iter()
            .map(|(k, v)| Ok::<_, io::Error>((self.path(&k)?, v)))
            .collect::<io::Result<Vec<_>>>()?;
        let store = self.store.clone();
        self.run(async move {
            futures_util::stream::iter(puts)
                .map(|(path, data)| {
                    let store = store.clone();
                    async move { store.put(&path, data.into()).await.map(|_| ()) }
                })
                .buffer_unordered(Self::PARALLEL)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
                .map_err(to_io)
        })
    }
}

impl ObjectStorage {
    /// How many requests a `put_many` or `get_many` has in flight.
    const PARALLEL: usize = 32;
}

impl Drop for ObjectStorage {
    fn drop(&mut self) {
        // The runtime may be dropped from an async context (server exit).
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("an empty runtime"),
        );
        rt.shutdown_background();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_objects_roundtrip_and_list_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LocalDir::new(tmp.path()).unwrap();
        s.put(
            "7/frames/00000000000000000002.amfs",
            Bytes::from_static(b"b"),
        )
        .unwrap();
        s.put(
            "7/frames/00000000000000000001.amfs",
            Bytes::from_static(b"a"),
        )
        .unwrap();
        assert_eq!(
            s.list("7/frames/").unwrap(),
            vec![
                "7/frames/00000000000000000001.amfs",
                "7/frames/00000000000000000002.amfs"
            ]
        );
        assert_eq!(
            s.get("7/frames/00000000000000000001.amfs")
                .unwrap()
                .unwrap(),
            Bytes::from_static(b"a")
        );
        assert!(s.get("7/nothing").unwrap().is_none());
        assert!(s.list("8/frames/").unwrap().is_empty());
        assert!(s.exists("7/frames/00000000000000000002.amfs").unwrap());
        assert!(!s.exists("7/complete").unwrap());
    }

    #[test]
    fn local_ranges_and_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LocalDir::new(tmp.path()).unwrap();
        s.put("1/recording.opus", Bytes::from_static(b"0123456789"))
            .unwrap();
        assert_eq!(s.size("1/recording.opus").unwrap(), Some(10));
        assert_eq!(s.size("1/other").unwrap(), None);
        assert_eq!(s.size("1").unwrap(), None, "a folder is no object");
        assert_eq!(
            s.get_range("1/recording.opus", 2..5).unwrap().unwrap(),
            Bytes::from_static(b"234")
        );
        assert_eq!(
            s.get_range("1/recording.opus", 9..10).unwrap().unwrap(),
            Bytes::from_static(b"9")
        );
        assert!(s.get_range("1/other", 0..1).unwrap().is_none());
        assert!(s.get_range("1/recording.opus", 8..12).is_err());
    }

    #[test]
    fn keys_cannot_leave_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LocalDir::new(tmp.path()).unwrap();
        for bad in ["../x", "a/../../x", "", "/abs", "a//b"] {
            assert!(s.put(bad, Bytes::new()).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_s3_urls_are_understood() {
        assert!(ObjectStorage::from_url("gs://bucket").is_err());
        assert!(ObjectStorage::from_url("s3://").is_err());
    }
}
