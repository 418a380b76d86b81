//! Runs: every run of the user, with a filter by state (`/runs?state=…`), the run page with
//! live progress (`/runs/{id}`), starting it again with the same input (`/runs/{id}/again`), the websocket relaying the progress
//! (`/runs/{id}/ws`), the whole result as a file (`/runs/{id}/result.json`), and cancelling
//! (`/runs/{id}/cancel`).

use std::sync::Arc;

use askama::Template;
use salvo::prelude::*;
use salvo::websocket::{Message, WebSocket, WebSocketUpgrade};

use super::chart::{self, Chart};
use super::error::HttpError;
use super::{App, CSRF_FIELD, Page, app, check_csrf, format, id_param, redirect, render, session};
use crate::runs::progress::{Figures, Progress};
use crate::runs::results::PREVIEW_BYTES;
use crate::runs::{RunManager, Subscription};
use crate::store::Store;
use crate::store::runs::{NewRun, Run, RunState, StoredResult};
use crate::store::sessions::Session;

/// How much of what a run's plugin printed its page shows (the controller keeps up to 512 KiB;
/// `kiln logs JOB` prints it all).
const PLUGIN_OUTPUT_SHOWN_BYTES: usize = 256 << 10;

/// How many runs the runs page lists.
const RUNS_LISTED: i64 = 500;

/// The routes under `/runs`.
pub fn router() -> Router {
    Router::with_path("runs").get(list).push(
        Router::with_path("{id}")
            .get(show)
            .push(Router::with_path("ws").goal(progress_socket))
            .push(Router::with_path("result.json").get(result_file))
            .push(Router::with_path("cancel").post(cancel))
            .push(Router::with_path("again").post(run_again)),
    )
}

#[derive(Template)]
#[template(path = "runs/index.html")]
struct ListPage {
    page: Page,
    runs: Vec<RunRow>,
    /// The state filtered on, `""` for all.
    state: &'static str,
    states: Vec<&'static str>,
    shown: String,
}

#[handler]
async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let state =
        match req.query::<String>("state").filter(|state| !state.is_empty()) {
            Some(name) => Some(RunState::parse(&name).ok_or_else(|| {
                HttpError::BadRequest(format!("there is no run state `{name}`: pick one of the list"))
            })?),
            None => None,
        };
    let runs: Vec<RunRow> =
        app.store.user_runs(user.user_id, state, RUNS_LISTED).await?.iter().map(RunRow::new).collect();
    let shown = match (runs.len() as i64, state) {
        (RUNS_LISTED, _) => format!("The newest {RUNS_LISTED} runs."),
        (n, Some(state)) => format!("{} {}.", format::count(n as u64, "run", "runs"), state.as_str()),
        (n, None) => format!("{}.", format::count(n as u64, "run", "runs")),
    };
    let page = ListPage {
        page: Page::new(depot, "Runs", "runs"),
        runs,
        state: state.map_or("", RunState::as_str),
        states: RunState::ALL.iter().map(|state| state.as_str()).collect(),
        shown,
    };
    render(res, StatusCode::OK, &page)
}

/// A run as a line of a table.
pub struct RunRow {
    pub id: i64,
    pub task_id: i64,
    pub task_title: String,
    pub cluster_id: i64,
    pub cluster_name: String,
    pub state: &'static str,
    pub input_name: String,
    pub input_size: String,
    pub created: String,
    pub duration: String,
    pub throughput: String,
}

impl RunRow {
    /// The table line of `run`.
    pub fn new(run: &Run) -> RunRow {
        RunRow {
            id: run.id,
            task_id: run.task_id,
            task_title: run.task_title.clone(),
            cluster_id: run.cluster_id,
            cluster_name: run.cluster_name.clone(),
            state: run.state.as_str(),
            input_name: run.input_name.clone(),
            input_size: format::bytes(run.input_bytes),
            created: format::time(run.created_at),
            duration: run.duration_ms().map(format::duration).unwrap_or_default(),
            throughput: run.throughput_bps().map(format::rate).unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "runs/show.html")]
struct ShowPage {
    page: Page,
    run: Run,
    row: RunRow,
    progress: Progress,
    percent: String,
    bytes_done: String,
    average: String,
    /// The result, or its first [`PREVIEW_BYTES`] (`result_truncated`, `result_shown` of
    /// `result_size`) when it is longer.
    result: Option<String>,
    result_truncated: bool,
    result_shown: String,
    result_size: String,
    /// What the plugin printed, per chunk (escaped by the template like all text).
    plugin_output: Option<String>,
    params_shown: String,
    /// The per-worker table and the throughput chart of an ended run, from its stored figures.
    workers: Vec<WorkerLine>,
    chart: Option<Chart>,
    /// Until when the input is kept for "Run again", or "".
    input_kept: String,
    /// The phases of an ended run.
    phases: Vec<chart::Phase>,
    /// How long an ended run's plugin build took, apart from its duration; "" when unknown.
    build_duration: String,
}

/// A line of the per-worker table.
struct WorkerLine {
    worker_id: u64,
    address: String,
    chunks_done: u64,
    lines_done: u64,
    bytes_done: String,
    in_flight: u32,
}

#[handler]
async fn show(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let run = app.store.run(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let preview = match app.store.run_result(user.user_id, id).await?.flatten() {
        Some(stored) if run.state == RunState::Succeeded => Some(preview(&app, stored).await?),
        _ => None,
    };
    let (result_truncated, result_shown, result_size) = match &preview {
        Some(preview) => (preview.truncated, format::bytes(preview.shown), format::bytes(preview.size)),
        None => (false, String::new(), String::new()),
    };
    let plugin_output = if run.state.is_final() {
        let text = app.store.run_plugin_output(user.user_id, id).await?.flatten();
        text.map(|text| match truncate(text, PLUGIN_OUTPUT_SHOWN_BYTES) {
            (shown, true) => format!("{shown}\n[... more: kiln logs {}]", run.job_id.unwrap_or_default()),
            (shown, false) => shown,
        })
    } else {
        None
    };
    let progress = Progress::from_run(&run);
    let figures = if run.state.is_final() {
        Figures::from_json(app.store.run_figures(user.user_id, id).await?.flatten().as_deref())
    } else {
        Figures::default()
    };
    let workers = figures
        .workers
        .iter()
        .map(|w| WorkerLine {
            worker_id: w.worker_id,
            address: w.address.clone(),
            chunks_done: w.chunks_done,
            lines_done: w.lines_done,
            bytes_done: chart::bytes(w.bytes_done),
            in_flight: w.in_flight,
        })
        .collect();
    let input_kept = run.kept_input().and(run.input_kept_until).map(format::time).unwrap_or_default();
    let phases = match run.finished_at {
        Some(end) if !figures.phases.is_empty() => chart::timeline(run.created_at, &figures.phases, end),
        _ => Vec::new(),
    };
    let build_duration = figures.build_ms.map(|ms| format::duration(i64::try_from(ms).unwrap_or(i64::MAX)));
    let page = ShowPage {
        build_duration: build_duration.unwrap_or_default(),
        phases,
        input_kept,
        workers,
        chart: chart::throughput(&figures.samples),
        page: Page::new(depot, format!("Run {} of {}", run.id, run.task_title), "tasks"),
        row: RunRow::new(&run),
        percent: format!("{:.0}", progress.percent.floor()),
        bytes_done: format::bytes(i64::try_from(progress.bytes_done).unwrap_or(i64::MAX)),
        average: format::rate(progress.average_bps),
        params_shown: if run.params.is_empty() { "(none)".to_owned() } else { run.params.clone() },
        progress,
        run,
        result: preview.map(|preview| preview.text),
        result_truncated,
        result_shown,
        result_size,
        plugin_output,
    };
    render(res, StatusCode::OK, &page)
}

/// What the run page shows of a result.
struct Preview {
    /// The text shown: the whole result, indented, or its first [`PREVIEW_BYTES`] as they are.
    text: String,
    truncated: bool,
    /// Bytes shown, and the result's whole length.
    shown: i64,
    size: i64,
}

/// The beginning of a stored result, read from its file (never the whole of a long one).
async fn preview(app: &App, stored: StoredResult) -> Result<Preview, HttpError> {
    let (text, size) = match stored {
        StoredResult::File(result) => {
            let text = app
                .results
                .preview(&result.file)
                .await
                .map_err(|e| HttpError::Internal(format!("cannot read the result file {}: {e}", result.file)))?;
            (text, result.bytes)
        }
        StoredResult::Row(text) => {
            let size = i64::try_from(text.len()).unwrap_or(i64::MAX);
            (truncate(text, PREVIEW_BYTES).0, size)
        }
    };
    let shown = i64::try_from(text.len()).unwrap_or(i64::MAX);
    if shown < size {
        Ok(Preview { text, truncated: true, shown, size })
    } else {
        // Whole and small: indented for reading.
        Ok(Preview { text: pretty_json(&text), truncated: false, shown, size })
    }
}

/// The whole result as a download, streamed from its file a piece at a time.
#[handler]
async fn result_file(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let stored = app.store.run_result(user.user_id, id).await?.flatten().ok_or(HttpError::NotFound)?;
    let disposition = format!("attachment; filename=\"run-{id}-result.json\"");
    let headers = res.headers_mut();
    headers.insert("content-type", salvo::http::HeaderValue::from_static("application/json"));
    if let Ok(value) = salvo::http::HeaderValue::from_str(&disposition) {
        headers.insert("content-disposition", value);
    }
    // The stored bytes are the plugin's JSON as the controller gave it: sent as they are.
    match stored {
        StoredResult::File(result) => {
            let file = app
                .results
                .open(&result.file)
                .await
                .map_err(|e| HttpError::Internal(format!("cannot read the result file {}: {e}", result.file)))?;
            if let Ok(value) = salvo::http::HeaderValue::from_str(&result.bytes.to_string()) {
                res.headers_mut().insert("content-length", value);
            }
            res.stream(crate::runs::results::stream(file));
        }
        StoredResult::Row(text) => {
            res.write_body(text).map_err(|e| HttpError::Internal(format!("cannot send the result: {e}")))?;
        }
    }
    Ok(())
}

/// The run a form posted to `/runs/{id}/…` acts on, with its user and the app: its CSRF token
/// checked, and the run the user's (else 404).
async fn posted_run(req: &mut Request, depot: &Depot) -> Result<(Session, Arc<App>, Run), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let csrf = req.form::<String>(CSRF_FIELD).await;
    check_csrf(depot, csrf.as_deref())?;
    let run = app.store.run(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    Ok((user, app, run))
}

#[handler]
async fn cancel(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let (user, app, run) = posted_run(req, depot).await?;
    let id = run.id;
    if !run.state.is_final() {
        let cluster = app.store.cluster(user.user_id, run.cluster_id).await?.ok_or(HttpError::NotFound)?;
        let target = app.runs.target(&cluster)?;
        app.runs.cancel(&run, target).await?;
        tracing::info!(user = user.user_id, run = id, "run cancelled");
    }
    redirect(res, &format!("/runs/{id}"));
    Ok(())
}

/// Starts the run's task again on the same cluster with the same input (kept for a while in
/// the data directory), processes and parameters, and the task's plugin as it is now.
#[handler]
async fn run_again(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let (user, app, run) = posted_run(req, depot).await?;
    let id = run.id;
    let Some(file) = run.kept_input() else {
        return Err(HttpError::BadRequest(
            "the input of this run is no longer kept: start the task again with the input file".to_owned(),
        ));
    };
    let cluster = app.store.cluster(user.user_id, run.cluster_id).await?.ok_or(HttpError::NotFound)?;
    let target = app.runs.target(&cluster)?;
    let plugin = app.store.task_plugin(user.user_id, run.task_id).await?.ok_or(HttpError::NotFound)?;
    let new_run = NewRun {
        task_id: run.task_id,
        cluster_id: run.cluster_id,
        input_name: run.input_name.clone(),
        input_bytes: run.input_bytes,
        processes: run.processes,
        params: run.params.clone(),
    };
    let again = app.store.create_run(user.user_id, &new_run).await?.ok_or(HttpError::NotFound)?;
    let Some(input) = app.inputs.link(&app.store, again.id, file).await else {
        let ending = crate::runs::failure_now("input", "the kept input of the run started again is gone");
        app.store.finish_run(again.id, &ending).await?;
        return Err(HttpError::BadRequest("the input of this run is no longer kept: start the task again".to_owned()));
    };
    tracing::info!(user = user.user_id, run = again.id, again_of = id, "run started again");
    app.metrics.runs_started.inc();
    app.runs.start(&again, plugin, input, target);
    redirect(res, &format!("/runs/{}", again.id));
    Ok(())
}

/// Relays the run's progress messages until it ends or the browser goes away. Only pages of
/// this site may open it (the `Origin` must be this host), so another site cannot read a
/// user's progress with the user's cookie.
#[handler]
async fn progress_socket(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    app.store.run(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let host = req.header::<String>("host").unwrap_or_default();
    let (runs, store) = (app.runs.clone(), app.store.clone());
    WebSocketUpgrade::new()
        .check_origin(move |origin| {
            origin.is_none_or(|origin| {
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host.as_str())
            })
        })
        .upgrade(req, res, move |socket| relay(socket, runs, store, user.user_id, id))
        .await
        .map_err(|e| {
            if e.code == StatusCode::FORBIDDEN {
                HttpError::Forbidden("the progress of a run is only shown on this site's pages".to_owned())
            } else {
                HttpError::BadRequest(format!("cannot open the progress socket: {e}"))
            }
        })
}

async fn relay(mut socket: WebSocket, runs: std::sync::Arc<RunManager>, store: Store, user_id: i64, run_id: i64) {
    let stored = |store: Store| async move {
        match store.run(user_id, run_id).await {
            Ok(Some(run)) => Some(Progress::from_run(&run).to_json()),
            _ => None,
        }
    };
    let Some(Subscription { last, mut messages }) = runs.subscribe(run_id) else {
        // Not active here: the stored state is the last word.
        if let Some(message) = stored(store).await {
            let _ = socket.send(Message::text(message)).await;
        }
        let _ = socket.close().await;
        return;
    };
    let first = match last {
        Some(message) => Some(message.to_string()),
        None => stored(store).await,
    };
    if let Some(first) = first
        && socket.send(Message::text(first)).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    if socket.send(Message::text(message.to_string())).await.is_err() {
                        return;
                    }
                }
                // A slow browser skips what it missed; the next message has every figure.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.close().await;
}

/// The JSON text indented, or as it is when it does not parse.
fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// At most `max` bytes of `text`, cut at a character boundary; answers whether it was cut.
fn truncate(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_results_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("héllo".into(), 2), ("h".into(), true));
        assert_eq!(truncate("abc".into(), 3), ("abc".into(), false));
        assert_eq!(pretty_json(r#"{"a":1}"#), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("not json"), "not json");
    }
}
