//! Inputs read by reference, through the `object_store` crate: the controller lists a URL's
//! objects ([`list`]), with each one's size, version and compression, and plans their splits;
//! each worker reads its own chunk's split ([`read_chunk`]; a compressed object, one split, as
//! a stream with [`super::compressed::chunks`]), so the input's bytes never pass through the
//! controller.
//!
//! A URL names one object or a prefix (a directory): a prefix stands for its objects, sorted by
//! path, leaving out names starting with `.` or `_` as a local directory does. To tell a
//! compressed object, the controller reads its first four bytes (nothing more).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};

use super::decode::{Compression, MAGIC_BYTES};
use super::split::{self, Split, SplitError};
use crate::rpc::input::ChunkSource;
use crate::rules::chunk::ChunkError;

/// How far past a split's end a worker reads in its first request, so that the split's last
/// line is finished without a second request unless it is longer than this.
pub const READ_AHEAD: u64 = 64 << 10;

/// How many bytes a worker reads per request when it counts the lines before a split.
const COUNT_PIECE: u64 = 8 << 20;

/// A chunk read by reference: its lines and where they start in the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRead {
    /// Where the lines start in the (decompressed) object.
    pub offset: u64,
    /// The lines, UTF-8.
    pub text: Vec<u8>,
}

/// An object of an input read by reference, as the controller listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputObject {
    /// Its URL, which plugins see as the chunk's file name.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its version: its ETag, or its modification time where the store has no ETag.
    pub version: String,
    /// How it is stored (a compressed object is one split).
    pub compression: Compression,
}

impl InputObject {
    /// What a worker needs to read the planned range `split` of this object, cutting a
    /// compressed one into chunks of `chunk_size` bytes and refusing lines longer than
    /// `max_line` bytes.
    pub fn source(&self, split: Split, chunk_size: u64, max_line: u64) -> ChunkSource {
        ChunkSource {
            url: self.url.clone(),
            size: self.size,
            version: self.version.clone(),
            compressed: self.compression != Compression::Plain,
            start: split.start,
            end: split.end,
            chunk_size,
            max_line,
        }
    }
}

/// Why an input read by reference could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The URL cannot name an object store.
    #[error("the input {url} is not a URL Kiln can read: {why}")]
    Url { url: String, why: String },
    /// The URL has credentials, a query or an encoded separator (the message names no
    /// credential).
    #[error("{why}")]
    Refused { why: String },
    /// The store answered an error (refused credentials, unreachable, missing bucket...).
    #[error("cannot read the input {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// No object has this name or prefix.
    #[error("the input {url} names no object: check the URL (a prefix must hold at least one object)")]
    Missing { url: String },
    /// No object has this name, and its HTTP server cannot list a prefix.
    #[error(
        "the input {url} names no object, and its server cannot list a prefix ({why}): only a WebDAV server lists; \
         give each object's URL (--input repeated)"
    )]
    NotListable { url: String, why: String },
    /// The object is not the one the controller listed.
    #[error(
        "the input object {url} changed during the job (it was {was}, it is now {now}): the job stops rather than \
         mix two versions of its input; submit it again once the object stays put"
    )]
    Changed { url: String, was: String, now: String },
    /// The object's text is not UTF-8 or its compressed data is bad.
    #[error("cannot read the input object {url}: {why}")]
    Content { url: String, why: String },
    /// A line is longer than the longest accepted (`--max-line-size`), the text is not UTF-8
    /// or the compressed data is bad, as in an uploaded input.
    #[error("input file {url}: {source}")]
    Chunk {
        url: String,
        #[source]
        source: ChunkError,
    },
    /// The store's answer broke off while the object was read.
    #[error("cannot read the input {url}: {why}")]
    Interrupted { url: String, why: String },
}

impl ReferenceError {
    /// Whether reading again (on this worker or another) cannot help.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ReferenceError::Changed { .. }
                | ReferenceError::Content { .. }
                | ReferenceError::Chunk { .. }
                | ReferenceError::Url { .. }
                | ReferenceError::Refused { .. }
                | ReferenceError::NotListable { .. }
        )
    }
}

/// How the S3 and HTTP stores retry: a few times, briefly, so that a refused credential or an
/// unreachable endpoint fails the submission in seconds; a worker's failed chunk is retried
/// on another worker anyway.
fn retry_config() -> RetryConfig {
    RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(20), ..RetryConfig::default() }
}

/// A new store for `url`'s bucket or server: S3 configured from the process's standard AWS
/// environment (endpoint, region, credentials), HTTP(S) at the URL's origin, files at `/`.
fn new_store(url: &str, parsed: &url::Url) -> Result<Arc<dyn ObjectStore>, String> {
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" => {
            crate::tls::install_process_provider();
            let store = AmazonS3Builder::from_env().with_url(url).with_retry(retry_config()).build();
            Arc::new(store.map_err(|e| format!("{e}: check the AWS_* environment of the controller and the workers"))?)
        }
        "http" | "https" => {
            crate::tls::install_process_provider();
            let origin = parsed.origin().ascii_serialization();
            // http:// is only read when the operator allowed the URL (`--input-url-allow`).
            let options = ClientOptions::new().with_allow_http(true);
            let store = HttpBuilder::new().with_url(origin).with_client_options(options).with_retry(retry_config());
            Arc::new(store.build().map_err(|e| e.to_string())?)
        }
        "file" => Arc::from(object_store::parse_url(parsed).map_err(|e| e.to_string())?.0),
        other => return Err(format!("Kiln reads s3://, http://, https:// and file:// inputs, not {other}://")),
    };
    Ok(store)
}

/// The store and path a URL names. Stores are kept per bucket or server (with their
/// connection pools), so that a worker's chunks do not each open connections anew.
pub(super) fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, url::Url, StorePath), ReferenceError> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let bad = |why: String| ReferenceError::Url { url: url.to_owned(), why };
    let parsed = super::allow::checked(url).map_err(|why| ReferenceError::Refused { why })?;
    let path = StorePath::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
    let key = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
    let key = match parsed.port() {
        Some(port) => format!("{key}:{port}"),
        None => key,
    };
    let stores = STORES.get_or_init(Mutex::default);
    if let Some(store) = stores.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return Ok((Arc::clone(store), parsed, path));
    }
    let store = new_store(url, &parsed).map_err(bad)?;
    stores.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_insert_with(|| Arc::clone(&store));
    Ok((store, parsed, path))
}

/// The URL of the object at `location` in the store that `base` names.
fn object_url(base: &url::Url, location: &StorePath) -> String {
    let mut url = base.clone();
    url.set_path(&format!("/{location}"));
    url.to_string()
}

fn version_of(meta: &ObjectMeta) -> String {
    meta.e_tag.clone().or_else(|| meta.version.clone()).unwrap_or_else(|| meta.last_modified.to_rfc3339())
}

fn is_hidden(location: &StorePath) -> bool {
    location.filename().is_some_and(|name| name.starts_with('.') || name.starts_with('_'))
}

/// The objects a URL names, in order: the object itself, or the objects below the prefix,
/// sorted by path. Fails naming the URL when the store refuses or none exists.
pub async fn list(url: &str) -> Result<Vec<InputObject>, ReferenceError> {
    let (store, base, path) = open(url)?;
    let store_error = |source| ReferenceError::Store { url: url.to_owned(), source };
    // A bucket's or server's root is a prefix; anything else may be an object.
    let head = match path.as_ref().is_empty() {
        true => Err(object_store::Error::NotFound { path: String::new(), source: "the root".into() }),
        false => store.head(&path).await,
    };
    let metas = match head {
        Ok(meta) => vec![meta],
        Err(object_store::Error::NotFound { .. }) => {
            let prefix = (!path.as_ref().is_empty()).then_some(&path);
            let listed: Result<Vec<ObjectMeta>, _> = store.list(prefix).try_collect().await;
            let mut metas = match listed {
                Ok(metas) => metas,
                // Only a WebDAV server lists (PROPFIND); the others refuse it, often oddly.
                Err(e) if base.scheme().starts_with("http") => {
                    return Err(ReferenceError::NotListable { url: url.to_owned(), why: e.to_string() });
                }
                Err(e) => return Err(store_error(e)),
            };
            metas.retain(|meta| !is_hidden(&meta.location));
            metas.sort_by(|a, b| a.location.cmp(&b.location));
            metas
        }
        Err(e) => return Err(store_error(e)),
    };
    if metas.is_empty() {
        return Err(ReferenceError::Missing { url: url.to_owned() });
    }
    let mut objects = Vec::with_capacity(metas.len());
    for meta in metas {
        let head = match meta.size {
            0 => Vec::new(),
            size => fetch(&*store, &meta.location, 0..size.min(MAGIC_BYTES as u64)).await.map_err(store_error)?.0,
        };
        objects.push(InputObject {
            url: object_url(&base, &meta.location),
            size: meta.size,
            version: version_of(&meta),
            compression: Compression::sniff(&head),
        });
    }
    Ok(objects)
}

/// The planned splits of the objects, in order: `(object index, split)`.
pub fn plan(objects: &[InputObject], split_size: u64) -> Vec<(u32, Split)> {
    let mut splits = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        let compressed = object.compression != Compression::Plain;
        for split in split::plan(object.size, split_size, compressed) {
            splits.push((index as u32, split));
        }
    }
    splits
}

async fn fetch(
    store: &dyn ObjectStore,
    location: &StorePath,
    range: Range<u64>,
) -> Result<(Vec<u8>, ObjectMeta), object_store::Error> {
    let options = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
    let result = store.get_opts(location, options).await?;
    let meta = result.meta.clone();
    Ok((result.bytes().await?.to_vec(), meta))
}

/// Fails unless the object `meta` describes is the version `source` was planned on.
pub(super) fn check_version(source: &ChunkSource, meta: &ObjectMeta) -> Result<(), ReferenceError> {
    let now = version_of(meta);
    if now != source.version || meta.size != source.size {
        return Err(ReferenceError::Changed {
            url: source.url.clone(),
            was: format!("version {} of {} bytes", source.version, source.size),
            now: format!("version {now} of {} bytes", meta.size),
        });
    }
    Ok(())
}

/// Reads a chunk of an input read by reference: the lines of its split of a plain object,
/// checked to be UTF-8. Every request checks that the object still has the version the
/// controller listed. A compressed object is read as a stream of chunks instead
/// ([`super::compressed::chunks`]).
pub async fn read_chunk(source: &ChunkSource) -> Result<ChunkRead, ReferenceError> {
    let (store, _, path) = open(&source.url)?;
    let url = source.url.as_str();
    let split = Split { start: source.start, end: source.end };
    let fetch_checked = |range: Range<u64>| {
        let (store, path, source) = (Arc::clone(&store), path.clone(), source.clone());
        async move {
            let url = source.url.as_str();
            match fetch(&*store, &path, range).await {
                Ok((bytes, meta)) => check_version(&source, &meta).map(|()| bytes),
                Err(e) => {
                    // A range past the end of a shrunk object fails: say that it changed.
                    if let Ok(meta) = store.head(&path).await {
                        check_version(&source, &meta)?;
                    }
                    Err(ReferenceError::Store { url: url.to_owned(), source: e })
                }
            }
        }
    };
    let read = split::read_split(split, source.size, READ_AHEAD, source.max_line, fetch_checked).await;
    let read = read.map_err(|error| match error {
        SplitError::Fetch(error) => error,
        SplitError::LineTooLong { offset, limit } => ReferenceError::Chunk {
            url: url.to_owned(),
            source: ChunkError::LineTooLongAt { offset, limit: usize::try_from(limit).unwrap_or(usize::MAX) },
        },
    })?;
    let (offset, text) = (read.offset, read.bytes);
    if let Err(e) = std::str::from_utf8(&text) {
        let why = format!("not valid UTF-8 at byte {} of the chunk: convert it to UTF-8 first", e.valid_up_to());
        return Err(ReferenceError::Content { url: url.to_owned(), why });
    }
    Ok(ChunkRead { offset, text })
}

/// The line ends a worker has counted from the start of objects, so that a chunk in the middle
/// of an object learns its first line's number: counting reads the object up to the chunk
/// once, and goes on from the furthest point counted before it, so a worker reads each object
/// at most once more whatever the number of its chunks it runs. Only plugins that declare
/// `LINE_NUMBERS` pay for it.
#[derive(Default)]
pub struct LineCounts {
    /// Per object and version: offsets counted to, and how many line ends lie before each.
    objects: Mutex<HashMap<(String, String), Counted>>,
}

/// Offsets of one object counted to, each with how many line ends lie before it; one count
/// at a time.
type Counted = Arc<tokio::sync::Mutex<BTreeMap<u64, u64>>>;

impl LineCounts {
    /// How many line ends lie before `offset` in the (plain) object of `source`.
    pub async fn before(&self, source: &ChunkSource, offset: u64) -> Result<u64, ReferenceError> {
        if offset == 0 {
            return Ok(0);
        }
        let key = (source.url.clone(), source.version.clone());
        let counted = Arc::clone(self.objects.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default());
        // One count per object at a time: the next chunk's count goes on from this one's.
        let mut counted = counted.lock().await;
        let (mut at, mut count) = counted.range(..=offset).next_back().map_or((0, 0), |(at, count)| (*at, *count));
        let (store, _, path) = open(&source.url)?;
        let store_error = |e| ReferenceError::Store { url: source.url.clone(), source: e };
        while at < offset {
            let (bytes, meta) = fetch(&*store, &path, at..(at + COUNT_PIECE).min(offset)).await.map_err(store_error)?;
            check_version(source, &meta)?;
            if bytes.is_empty() {
                break;
            }
            count += bytecount::count(&bytes, b'\n') as u64;
            at += bytes.len() as u64;
        }
        counted.insert(offset, count);
        Ok(count)
    }
}
