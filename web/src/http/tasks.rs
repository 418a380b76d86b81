//! Tasks: list, create, show (with the task's runs), edit, delete, and start a run
//! (`/tasks`, `/tasks/new`, `/tasks/{id}`, `/tasks/{id}/edit`, `/tasks/{id}/delete`,
//! `/tasks/{id}/start`).

use std::sync::Arc;

use askama::Template;
use salvo::prelude::*;
use tempfile::TempPath;

use super::error::HttpError;
use super::runs::RunRow;
use super::upload::{FileLimit, Form, UploadedFile, read_form};
use super::{App, CSRF_FIELD, Page, app, check_csrf, format, id_param, redirect, render, session};
use crate::runs::inputs::RunInput;
use crate::security::new_token;
use crate::store::clusters::Cluster;
use crate::store::runs::{NewRun, RunsOf};
use crate::store::tasks::{Plugin, PluginContent, PluginKind, Task};

/// The longest title, in characters.
const MAX_TITLE_CHARS: usize = 200;

/// How many runs a task's page lists.
const RUNS_SHOWN: i64 = 100;

/// The most chunks in flight per worker a user may ask for.
const MAX_PROCESSES: i64 = 64;

/// The routes under `/tasks`.
pub fn router() -> Router {
    Router::with_path("tasks").get(list).post(create).push(Router::with_path("new").get(new_page)).push(
        Router::with_path("{id}")
            .get(show)
            .post(update)
            .push(Router::with_path("edit").get(edit_page))
            .push(Router::with_path("delete").post(delete))
            .push(Router::with_path("start").get(start_page).post(start)),
    )
}

#[derive(Template)]
#[template(path = "tasks/index.html")]
struct ListPage {
    page: Page,
    tasks: Vec<TaskRow>,
}

struct TaskRow {
    id: i64,
    title: String,
    plugin_name: String,
    updated: String,
    /// The state of the task's last run, if it has one.
    last_run: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "tasks/form.html")]
struct FormPage {
    page: Page,
    /// The task being edited; `None` for a new one.
    task_id: Option<i64>,
    title: String,
    description: String,
    plugin_name: Option<String>,
    max_plugin_bytes: u64,
    max_plugin: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "tasks/show.html")]
struct ShowPage {
    page: Page,
    task: Task,
    plugin_size: String,
    created: String,
    updated: String,
    runs: Vec<RunRow>,
}

#[derive(Template)]
#[template(path = "tasks/start.html")]
struct StartPage {
    page: Page,
    task: Task,
    clusters: Vec<Cluster>,
    cluster_id: i64,
    processes: i64,
    params: String,
    max_input_bytes: u64,
    max_input: String,
    error: Option<String>,
}

#[handler]
async fn list(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let tasks = app.store.tasks(user.user_id).await?;
    let last_runs: std::collections::HashMap<i64, _> =
        app.store.last_run_states(user.user_id).await?.into_iter().collect();
    let tasks = tasks
        .into_iter()
        .map(|task| TaskRow {
            last_run: last_runs.get(&task.id).map(|state| state.as_str()),
            id: task.id,
            title: task.title,
            plugin_name: task.plugin_name,
            updated: format::time(task.updated_at),
        })
        .collect();
    render(res, StatusCode::OK, &ListPage { page: Page::new(depot, "Tasks", "tasks"), tasks })
}

#[handler]
async fn new_page(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    session(depot)?;
    let app = app(depot)?;
    render(res, StatusCode::OK, &form_page(depot, &app, None, String::new(), String::new(), None, None))
}

#[handler]
async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let mut form = read_task_form(req, depot, &app).await?;
    let (title, description) =
        (form.text("title").to_owned(), form.texts.get("description").cloned().unwrap_or_default());
    let plugin = match form.files.remove("plugin") {
        Some(file) => read_plugin(&app, file).await,
        None => Err("choose the plugin to upload: a lib.rs, or a .tar.gz or .zip of a crate".to_owned()),
    };
    let problem = title_problem(&title).or_else(|| plugin.as_ref().err().cloned());
    let (Some((plugin, file)), None) = (plugin.ok(), problem.clone()) else {
        let page = form_page(depot, &app, None, title, description, None, problem);
        return render(res, StatusCode::UNPROCESSABLE_ENTITY, &page);
    };
    let task = app.store.create_task(user.user_id, &title, &description, &plugin).await?;
    keep(file);
    tracing::info!(user = user.user_id, task = task.id, "task created");
    redirect(res, &format!("/tasks/{}", task.id));
    Ok(())
}

#[handler]
async fn show(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let task = app.store.task(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let runs = app.store.task_runs(user.user_id, id, RUNS_SHOWN).await?.iter().map(RunRow::new).collect();
    let page = ShowPage {
        page: Page::new(depot, task.title.clone(), "tasks"),
        plugin_size: format::bytes(task.plugin_size),
        created: format::time(task.created_at),
        updated: format::time(task.updated_at),
        task,
        runs,
    };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn edit_page(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let task = app.store.task(user.user_id, id_param(req)?).await?.ok_or(HttpError::NotFound)?;
    let page = form_page(depot, &app, Some(task.id), task.title, task.description, Some(task.plugin_name), None);
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn update(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let task = app.store.task(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let mut form = read_task_form(req, depot, &app).await?;
    let (title, description) =
        (form.text("title").to_owned(), form.texts.get("description").cloned().unwrap_or_default());
    // A new plugin is optional when editing.
    let plugin = match form.files.remove("plugin") {
        Some(file) => read_plugin(&app, file).await.map(Some),
        None => Ok(None),
    };
    let problem = title_problem(&title).or_else(|| plugin.as_ref().err().cloned());
    let (Ok(plugin), None) = (plugin, problem.clone()) else {
        let page = form_page(depot, &app, Some(id), title, description, Some(task.plugin_name), problem);
        return render(res, StatusCode::UNPROCESSABLE_ENTITY, &page);
    };
    let (plugin, file) = plugin.unzip();
    let old = match &plugin {
        Some(_) => app.store.task_plugin(user.user_id, id).await?,
        None => None,
    };
    if !app.store.update_task(user.user_id, id, &title, &description, plugin.as_ref()).await? {
        return Err(HttpError::NotFound);
    }
    if let Some(file) = file {
        keep(file);
        remove_plugin_file(&app, old.as_ref()).await;
    }
    redirect(res, &format!("/tasks/{id}"));
    Ok(())
}

#[handler]
async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let csrf = req.form::<String>(CSRF_FIELD).await;
    check_csrf(depot, csrf.as_deref())?;
    app.store.task(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    // Runs still going are cancelled first, so no job is left running for a deleted task.
    cancel_runs(&app, user.user_id, app.store.task_runs(user.user_id, id, i64::MAX).await?).await;
    let plugin = app.store.task_plugin(user.user_id, id).await?;
    let results = app.store.run_result_files(RunsOf::Task { user_id: user.user_id, task_id: id }).await?;
    if !app.store.delete_task(user.user_id, id).await? {
        return Err(HttpError::NotFound);
    }
    remove_plugin_file(&app, plugin.as_ref()).await;
    app.results.remove(&results).await;
    redirect(res, "/tasks");
    Ok(())
}

#[handler]
async fn start_page(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let task = app.store.task(user.user_id, id_param(req)?).await?.ok_or(HttpError::NotFound)?;
    let page = start_form(depot, &app, user.user_id, task, None, 2, String::new(), None).await?;
    render(res, StatusCode::OK, &page)
}

/// The input of a run being started: an upload, or a URL the workers read.
enum StartInput {
    Upload(UploadedFile),
    Url(String),
}

/// The longest input URL accepted (it is stored as the run's input name).
const MAX_INPUT_URL_BYTES: usize = 2048;

#[handler]
async fn start(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let task = app.store.task(user.user_id, id_param(req)?).await?.ok_or(HttpError::NotFound)?;
    let limits = [FileLimit { field: "input", what: "the input file", max_bytes: app.max_input_bytes }];
    let mut form = read_form(req, &app.upload_dir, &limits, |sent| check_csrf(depot, sent)).await?;
    let cluster_id = form.text("cluster_id").parse::<i64>().ok();
    let processes = form.text("processes").parse::<i64>().ok();
    let params = form.texts.get("params").cloned().unwrap_or_default();
    let cluster = match cluster_id {
        Some(id) => app.store.cluster(user.user_id, id).await?,
        None => None,
    };
    let input_url = form.text("input_url").to_owned();
    let input = match (form.files.remove("input"), input_url.is_empty()) {
        (Some(upload), true) => Some(StartInput::Upload(upload)),
        (None, false) => Some(StartInput::Url(input_url)),
        _ => None,
    };
    let problem = if cluster.is_none() {
        Some("choose one of your clusters".to_owned())
    } else if !processes.is_some_and(|n| (1..=MAX_PROCESSES).contains(&n)) {
        Some(format!("processes per worker must be a number from 1 to {MAX_PROCESSES}"))
    } else if input.is_none() {
        Some("choose the input file, or give the URL of an input the workers read (not both)".to_owned())
    } else if let Some(StartInput::Url(url)) = &input
        && (!kiln_engine::input::is_reference(url) || url.len() > MAX_INPUT_URL_BYTES)
    {
        Some(format!(
            "the input URL must start with file://, s3://, http:// or https:// and be at most {MAX_INPUT_URL_BYTES} bytes"
        ))
    } else if let Some(StartInput::Url(url)) = &input
        && let Err(why) = kiln_engine::input::allow::checked(url)
    {
        // Refused before the run (and the URL, its name) is stored: credentials never are.
        Some(why)
    } else {
        None
    };
    let checked = match (problem, cluster, input, processes) {
        (None, Some(cluster), Some(input), Some(processes)) => match app.runs.target(&cluster) {
            Ok(target) => Ok((cluster, input, processes, target)),
            Err(e) => Err(e.to_string()),
        },
        (problem, ..) => Err(problem.unwrap_or_default()),
    };
    let (cluster, input, processes, target) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            let processes = processes.unwrap_or(2);
            let page = start_form(depot, &app, user.user_id, task, cluster_id, processes, params, Some(error)).await?;
            return render(res, StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    let plugin = app.store.task_plugin(user.user_id, task.id).await?.ok_or(HttpError::NotFound)?;
    let (input_name, input_bytes) = match &input {
        StartInput::Upload(upload) => (upload.file_name.clone(), i64::try_from(upload.size).unwrap_or(i64::MAX)),
        StartInput::Url(url) => (url.clone(), 0),
    };
    let new_run = NewRun { task_id: task.id, cluster_id: cluster.id, input_name, input_bytes, processes, params };
    let run = app.store.create_run(user.user_id, &new_run).await?.ok_or(HttpError::NotFound)?;
    tracing::info!(user = user.user_id, task = task.id, run = run.id, cluster = cluster.id, "run started");
    app.metrics.runs_started.inc();
    let input = match input {
        StartInput::Upload(upload) => app.inputs.keep_upload(&app.store, run.id, upload.path).await,
        StartInput::Url(url) => RunInput::Url(url),
    };
    app.runs.start(&run, plugin, input, target);
    redirect(res, &format!("/runs/{}", run.id));
    Ok(())
}

/// Reads a task's multipart form (title, description, plugin).
async fn read_task_form(req: &mut Request, depot: &Depot, app: &App) -> Result<Form, HttpError> {
    let limits = [FileLimit { field: "plugin", what: "the plugin", max_bytes: app.max_plugin_bytes }];
    read_form(req, &app.upload_dir, &limits, |sent| check_csrf(depot, sent)).await
}

/// Checks an uploaded plugin the way a worker will read it and moves it into the plugin
/// directory; the error is the message for the form. The file is removed when the answer's
/// [`TempPath`] is dropped, unless it is [`keep`]t once the task is stored.
///
/// A single `.rs` file is never read here: the builder only wraps it, and its size was capped
/// while it streamed in. An archive is unpacked in memory once to check it, as a worker would.
async fn read_plugin(app: &App, file: UploadedFile) -> Result<(Plugin, TempPath), String> {
    let kind = PluginKind::from_file_name(&file.file_name).ok_or_else(|| {
        format!("`{}` is not a plugin: upload a lib.rs, or a .tar.gz, .tgz or .zip of a crate", file.file_name)
    })?;
    let internal = |e: std::io::Error| {
        tracing::error!("cannot check an uploaded plugin: {e}");
        "the plugin could not be checked on the server; try again".to_owned()
    };
    if file.size > kiln_engine::plugin_source::MAX_BYTES {
        return Err(format!(
            "the plugin cannot be used: it is larger than {}",
            format::bytes(i64::try_from(kiln_engine::plugin_source::MAX_BYTES).unwrap_or(i64::MAX))
        ));
    }
    // The reader tells a single file from an archive by the name's ending.
    let stored = format!("{}-{}", new_token(), kind.file_name());
    let path = app.plugin_dir.join(&stored);
    tokio::fs::rename(&file.path, &path).await.map_err(internal)?;
    let path = TempPath::try_from_path(path).map_err(internal)?;
    if kind != PluginKind::RustFile {
        let checked = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || kiln_engine::plugin_source::read_source(&path).map(|_| ())).await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("the plugin cannot be used: {e}")),
            Err(e) => return Err(internal(std::io::Error::other(e))),
        }
    }
    let size = i64::try_from(file.size).unwrap_or(i64::MAX);
    Ok((Plugin { name: file.file_name, kind, content: PluginContent::File { file: stored, size } }, path))
}

/// Keeps a plugin file that a stored task now names.
fn keep(file: TempPath) {
    if let Err(e) = file.keep() {
        tracing::error!("cannot keep a plugin file: {e}");
    }
}

/// Removes the file of a plugin no task names any longer.
async fn remove_plugin_file(app: &App, plugin: Option<&Plugin>) {
    if let Some(file) = plugin.and_then(Plugin::file) {
        remove_plugin_named(app, file).await;
    }
}

/// Removes the file `file` of the plugin directory, which no task names any longer.
pub(super) async fn remove_plugin_named(app: &App, file: &str) {
    if let Err(e) = tokio::fs::remove_file(app.plugin_dir.join(file)).await {
        tracing::warn!(file, "cannot remove the file of a replaced or deleted plugin: {e}");
    }
}

/// Cancels the runs among `runs` that have not ended (of a task or an account being deleted),
/// so that no job is left running for them; a cluster that cannot be reached is logged.
pub(super) async fn cancel_runs(app: &App, user_id: i64, runs: Vec<crate::store::runs::Run>) {
    for run in runs.into_iter().filter(|run| !run.state.is_final()) {
        let cluster = match app.store.cluster(user_id, run.cluster_id).await {
            Ok(Some(cluster)) => cluster,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(run = run.id, "cannot cancel the run: {e}");
                continue;
            }
        };
        if let Ok(target) = app.runs.target(&cluster)
            && let Err(e) = app.runs.cancel(&run, target).await
        {
            tracing::warn!(run = run.id, "cannot cancel the run of a deleted task or account: {e}");
        }
    }
}

fn title_problem(title: &str) -> Option<String> {
    if title.is_empty() {
        Some("give the task a title".to_owned())
    } else if title.chars().count() > MAX_TITLE_CHARS {
        Some(format!("the title is longer than {MAX_TITLE_CHARS} characters"))
    } else {
        None
    }
}

fn form_page(
    depot: &Depot,
    app: &App,
    task_id: Option<i64>,
    title: String,
    description: String,
    plugin_name: Option<String>,
    error: Option<String>,
) -> FormPage {
    let heading = if task_id.is_some() { "Edit task" } else { "New task" };
    FormPage {
        page: Page::new(depot, heading, "tasks"),
        task_id,
        title,
        description,
        plugin_name,
        max_plugin_bytes: app.max_plugin_bytes,
        max_plugin: format::bytes(i64::try_from(app.max_plugin_bytes).unwrap_or(i64::MAX)),
        error,
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_form(
    depot: &Depot,
    app: &Arc<App>,
    user_id: i64,
    task: Task,
    cluster_id: Option<i64>,
    processes: i64,
    params: String,
    error: Option<String>,
) -> Result<StartPage, HttpError> {
    if app.embedded_cluster {
        app.store.ensure_local_cluster(user_id).await?;
    }
    let mut clusters = app.store.clusters(user_id).await?;
    // A "local" row left from a start with the embedded cluster is not offered without it.
    clusters.retain(|cluster| app.embedded_cluster || !cluster.embedded);
    let cluster_id = cluster_id.or_else(|| clusters.first().map(|c| c.id)).unwrap_or(0);
    Ok(StartPage {
        page: Page::new(depot, format!("Start {}", task.title), "tasks"),
        task,
        clusters,
        cluster_id,
        processes,
        params,
        max_input_bytes: app.max_input_bytes,
        max_input: format::bytes(i64::try_from(app.max_input_bytes).unwrap_or(i64::MAX)),
        error,
    })
}
