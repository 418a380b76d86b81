//! Jobs whose input is read by reference: the controller lists the objects of the job's URLs
//! (size, version, compression) before the job exists, so a missing object, a refused
//! credential or an unreachable store fails the submission naming the input and leaves no job;
//! it plans byte-range splits (`input::split`) and stores them as the job's chunks at once,
//! each chunk's `file` its object and its offset and length its planned range. The workers
//! read their chunks themselves; no input byte passes through the controller.

use std::sync::Arc;

use tracing::info;

use super::Shared;
use super::ending::fail_internal;
use super::state::job::Job;
use super::state::spool::{Spool, chunk_size_of};
use super::store::ChunkMeta;
use crate::input::reference::{self, InputObject};
use crate::rpc::{JobId, JobSpec, JobState, RpcError};

/// The most objects one input may name (as many as an uploaded input's files).
const MAX_OBJECTS: usize = 100_000;

/// Lists the objects of `spec.input_urls`, creates the job and queues all its chunks.
pub(super) async fn create_job(shared: &Arc<Shared>, mut spec: JobSpec, created_ms: u64) -> Result<JobId, RpcError> {
    let mut objects: Vec<InputObject> = Vec::new();
    for url in &spec.input_urls {
        check_allowed(shared, url).await?;
        let listed = reference::list(url).await.map_err(|e| RpcError::Invalid(e.to_string()))?;
        objects.extend(listed);
        if objects.len() > MAX_OBJECTS {
            return Err(RpcError::Invalid(format!(
                "an input may hold at most {MAX_OBJECTS} objects: name fewer, larger ones, or submit several jobs"
            )));
        }
    }
    spec.input_files = objects.iter().map(|object| object.url.clone()).collect();
    let bytes_total: u64 = objects.iter().map(|object| object.size).sum();
    if spec.chunk_size == 0 {
        spec.chunk_size = fitted_chunk_size(shared, &spec, bytes_total);
    }
    let metas: Vec<ChunkMeta> = reference::plan(&objects, chunk_size_of(spec.chunk_size) as u64)
        .into_iter()
        .map(|(file, split)| ChunkMeta {
            file,
            offset: split.start,
            len: split.end - split.start,
            // A split that starts its object starts at line 1; the others cannot know.
            first_line: u64::from(split.start == 0),
            n_lines: 0,
        })
        .collect();
    let internal = |e: &dyn std::fmt::Display| RpcError::Internal(e.to_string());
    let job_id = shared.store.insert_job(&spec, created_ms).await.map_err(|e| internal(&e))?;
    if let Err(e) = shared.store.add_objects(job_id, &objects).await {
        fail_internal(shared, job_id, e.to_string()).await;
        return Err(internal(&e));
    }
    info!(job = job_id, owner = %spec.owner, input = %spec.input_name, objects = objects.len(), "job created");
    let spool = Spool::new(shared.input_path(job_id), spec.chunk_size);
    let mut job = Job::new(job_id, spec, created_ms, spool);
    job.set_objects(objects);
    let group_size = job.group_size();
    shared.with_state(|st| st.add_job(job));
    match shared.store.finish_input(job_id, 0, &metas, bytes_total, group_size).await {
        Ok(true) => {}
        Ok(false) => return Err(RpcError::Invalid(format!("job {job_id} ended before its input was planned"))),
        Err(e) => {
            let message = format!("cannot store the chunks of the input: {e}");
            fail_internal(shared, job_id, message.clone()).await;
            return Err(RpcError::Internal(message));
        }
    }
    shared.with_state(|st| {
        if let Some(job) = st.job_mut(job_id).filter(|job| job.state() == JobState::Uploading) {
            job.input_finished(metas, bytes_total);
            job.publish();
        }
    });
    shared.wake();
    Ok(job_id)
}

/// The chunk size of a job that gave none: fitted to its input's size and the slots of the
/// workers registered now (the job's `processes` per worker, or each worker's own), as
/// run-local fits its chunks (`rules::chunk::fitted_chunk_size`). Workers that join later run
/// the same chunks; with none registered yet, the input is sized for one slot, which the cap
/// on a fitted chunk's size keeps at most 24 MiB.
fn fitted_chunk_size(shared: &Shared, spec: &JobSpec, bytes_total: u64) -> u64 {
    let slots: u64 = shared.with_state(|st| {
        let per_worker = |processes: u32| u64::from(if spec.processes > 0 { spec.processes } else { processes.max(1) });
        st.workers().iter().map(|worker| per_worker(worker.info().processes)).sum()
    });
    let slots = usize::try_from(slots).unwrap_or(usize::MAX);
    let memory_limit = (spec.memory_limit > 0).then_some(spec.memory_limit);
    crate::rules::chunk::fitted_chunk_size(bytes_total, slots, memory_limit) as u64
}

/// Refuses a URL the operator did not allow, before anything is fetched: a `file://` URL
/// outside the `--file-input-root` directories (a client holding the API key, or a web user,
/// must not make workers read whatever their hosts hold), and an `s3://` or `http(s)://` URL
/// below no `--input-url-allow` prefix (nor make the cluster fetch whatever URL its network
/// reaches: cloud metadata, internal services). A URL with credentials is refused without
/// being echoed.
async fn check_allowed(shared: &Shared, url: &str) -> Result<(), RpcError> {
    let parsed = crate::input::allow::checked(url).map_err(RpcError::Invalid)?;
    let refuse = |why: &str| RpcError::Invalid(format!("the input {url} is refused: {why}"));
    if matches!(parsed.scheme(), "s3" | "http" | "https") {
        if shared.input_url_allow.is_empty() {
            return Err(refuse(
                "this controller reads no s3:// or http(s):// input; start it with --input-url-allow PREFIX to allow one",
            ));
        }
        if !shared.input_url_allow.iter().any(|prefix| prefix.admits(&parsed)) {
            return Err(refuse("it is below no prefix this controller reads (--input-url-allow)"));
        }
        return Ok(());
    }
    if parsed.scheme() != "file" {
        return Ok(());
    }
    if shared.file_input_roots.is_empty() {
        return Err(refuse("this controller reads no file:// input; start it with --file-input-root DIR to allow one"));
    }
    let path = parsed.to_file_path().map_err(|()| refuse("it names no local path"))?;
    // Resolved, so that `..` and links cannot leave a root.
    let resolved = tokio::fs::canonicalize(&path)
        .await
        .map_err(|e| RpcError::Invalid(format!("cannot read the input {url}: {e}: check the path")))?;
    if !shared.file_input_roots.iter().any(|root| resolved.starts_with(root)) {
        return Err(refuse("it is outside the directories this controller reads (--file-input-root)"));
    }
    Ok(())
}

/// The objects of a job found in the store after a restart; `None` for an uploaded input.
pub(super) async fn resume_objects(shared: &Shared, job_id: JobId) -> Result<Option<Vec<InputObject>>, String> {
    let objects = shared.store.objects(job_id).await.map_err(|e| e.to_string())?;
    Ok((!objects.is_empty()).then_some(objects))
}
