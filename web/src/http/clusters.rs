//! Clusters: list, create, show (live workers and recent runs), edit, delete (`/clusters`,
//! `/clusters/new`, `/clusters/{id}`, `/clusters/{id}/edit`, `/clusters/{id}/delete`).
//! An API key is written once and never shown back whole.

use askama::Template;
use salvo::prelude::*;
use serde::Deserialize;

use super::error::HttpError;
use super::runs::RunRow;
use super::{CSRF_FIELD, Page, app, check_csrf, format, id_param, parse_form, redirect, render, session};
use crate::store::StoreError;
use crate::store::clusters::{Cluster, ClusterFields};
use crate::store::runs::RunsOf;

/// How many runs a cluster's page lists.
const RUNS_SHOWN: i64 = 20;

/// The longest cluster name, in characters.
const MAX_NAME_CHARS: usize = 100;

/// The routes under `/clusters`.
pub fn router() -> Router {
    Router::with_path("clusters").get(list).post(create).push(Router::with_path("new").get(new_page)).push(
        Router::with_path("{id}")
            .get(show)
            .post(update)
            .push(Router::with_path("edit").get(edit_page))
            .push(Router::with_path("delete").post(delete)),
    )
}

#[derive(Template)]
#[template(path = "clusters/index.html")]
struct ListPage {
    page: Page,
    clusters: Vec<Cluster>,
}

#[derive(Template)]
#[template(path = "clusters/form.html")]
struct FormPage {
    page: Page,
    cluster_id: Option<i64>,
    name: String,
    controller_address: String,
    api_key_hint: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "clusters/show.html")]
struct ShowPage {
    page: Page,
    cluster: Cluster,
    address: String,
    workers: Vec<WorkerRow>,
    workers_shown: String,
    jobs_shown: String,
    info_error: Option<String>,
    runs: Vec<RunRow>,
}

struct WorkerRow {
    worker_id: u64,
    hostname: String,
    address: String,
    processes: u32,
    in_flight: u32,
    chunks_done: u64,
    last_seen: String,
}

#[derive(Deserialize)]
struct ClusterForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    controller_address: String,
    #[serde(default)]
    api_key: String,
    #[serde(default, rename = "csrf_token")]
    csrf: Option<String>,
}

#[handler]
async fn list(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    if app.embedded_cluster {
        app.store.ensure_local_cluster(user.user_id).await?;
    }
    let mut clusters = app.store.clusters(user.user_id).await?;
    // A "local" row left from a start with the embedded cluster is not offered without it.
    clusters.retain(|cluster| app.embedded_cluster || !cluster.embedded);
    render(res, StatusCode::OK, &ListPage { page: Page::new(depot, "Clusters", "clusters"), clusters })
}

#[handler]
async fn new_page(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    session(depot)?;
    let page = FormPage {
        page: Page::new(depot, "New cluster", "clusters"),
        cluster_id: None,
        name: String::new(),
        controller_address: String::new(),
        api_key_hint: None,
        error: None,
    };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let form: ClusterForm = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let fields = ClusterFields {
        name: form.name.trim().to_owned(),
        controller_address: form.controller_address.trim().to_owned(),
        api_key: Some(form.api_key.trim().to_owned()),
    };
    let problem = fields_problem(&fields, true);
    let created = match problem {
        Some(problem) => Err(problem),
        None => match app.store.create_cluster(user.user_id, &fields).await {
            Ok(cluster) => Ok(cluster),
            Err(StoreError::Duplicate(what)) => Err(format!("{what} exists already: choose another name")),
            Err(e) => return Err(e.into()),
        },
    };
    match created {
        Ok(cluster) => {
            redirect(res, &format!("/clusters/{}", cluster.id));
            Ok(())
        }
        Err(error) => {
            let page = FormPage {
                page: Page::new(depot, "New cluster", "clusters"),
                cluster_id: None,
                name: fields.name,
                controller_address: fields.controller_address,
                api_key_hint: None,
                error: Some(error),
            };
            render(res, StatusCode::UNPROCESSABLE_ENTITY, &page)
        }
    }
}

#[handler]
async fn show(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let cluster = app.store.cluster(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let runs = app.store.cluster_runs(user.user_id, id, RUNS_SHOWN).await?.iter().map(RunRow::new).collect();
    let (address, info) = match app.runs.target(&cluster) {
        Ok(target) => (target.address.clone(), app.runs.cluster_info(&target).await),
        Err(e) => (String::new(), Err(e.to_string())),
    };
    let (workers, active_jobs, info_error) = match info {
        Ok(info) => {
            let workers = info
                .workers
                .into_iter()
                .map(|w| WorkerRow {
                    worker_id: w.worker_id,
                    hostname: w.hostname,
                    address: w.address,
                    processes: w.processes,
                    in_flight: w.in_flight,
                    chunks_done: w.chunks_done,
                    last_seen: format::duration(i64::try_from(w.last_seen_ms).unwrap_or(i64::MAX)),
                })
                .collect();
            (workers, info.active_jobs, None)
        }
        Err(e) => (Vec::new(), 0, Some(e)),
    };
    let page = ShowPage {
        page: Page::new(depot, cluster.name.clone(), "clusters"),
        cluster,
        address,
        workers_shown: format::count(workers.len() as u64, "live worker", "live workers"),
        workers,
        jobs_shown: format::count(active_jobs, "job", "jobs"),
        info_error,
        runs,
    };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn edit_page(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let cluster = app.store.cluster(user.user_id, id_param(req)?).await?.ok_or(HttpError::NotFound)?;
    if cluster.embedded {
        return Err(HttpError::BadRequest("the local cluster is part of this server and cannot be edited".into()));
    }
    let page = FormPage {
        page: Page::new(depot, "Edit cluster", "clusters"),
        cluster_id: Some(cluster.id),
        api_key_hint: Some(cluster.api_key_hint()),
        name: cluster.name,
        controller_address: cluster.controller_address,
        error: None,
    };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn update(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let cluster = app.store.cluster(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    let form: ClusterForm = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    if cluster.embedded {
        return Err(HttpError::BadRequest("the local cluster is part of this server and cannot be edited".into()));
    }
    let api_key = form.api_key.trim();
    let fields = ClusterFields {
        name: form.name.trim().to_owned(),
        controller_address: form.controller_address.trim().to_owned(),
        // An empty key field keeps the stored key.
        api_key: (!api_key.is_empty()).then(|| api_key.to_owned()),
    };
    let updated = match fields_problem(&fields, false) {
        Some(problem) => Err(problem),
        None => match app.store.update_cluster(user.user_id, id, &fields).await {
            Ok(true) => Ok(()),
            Ok(false) => return Err(HttpError::NotFound),
            Err(StoreError::Duplicate(what)) => Err(format!("{what} exists already: choose another name")),
            Err(e) => return Err(e.into()),
        },
    };
    match updated {
        Ok(()) => {
            redirect(res, &format!("/clusters/{id}"));
            Ok(())
        }
        Err(error) => {
            let page = FormPage {
                page: Page::new(depot, "Edit cluster", "clusters"),
                cluster_id: Some(id),
                api_key_hint: Some(cluster.api_key_hint()),
                name: fields.name,
                controller_address: fields.controller_address,
                error: Some(error),
            };
            render(res, StatusCode::UNPROCESSABLE_ENTITY, &page)
        }
    }
}

#[handler]
async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let id = id_param(req)?;
    let csrf = req.form::<String>(CSRF_FIELD).await;
    check_csrf(depot, csrf.as_deref())?;
    let cluster = app.store.cluster(user.user_id, id).await?.ok_or(HttpError::NotFound)?;
    if cluster.embedded {
        return Err(HttpError::BadRequest("the local cluster is part of this server and cannot be deleted".into()));
    }
    if let Ok(target) = app.runs.target(&cluster) {
        for run in app.store.cluster_runs(user.user_id, id, i64::MAX).await? {
            if !run.state.is_final()
                && let Err(e) = app.runs.cancel(&run, target.clone()).await
            {
                tracing::warn!(run = run.id, "cannot cancel the run of a deleted cluster: {e}");
            }
        }
    }
    let results = app.store.run_result_files(RunsOf::Cluster { user_id: user.user_id, cluster_id: id }).await?;
    if !app.store.delete_cluster(user.user_id, id).await? {
        return Err(HttpError::NotFound);
    }
    app.results.remove(&results).await;
    redirect(res, "/clusters");
    Ok(())
}

/// What is wrong with a cluster's fields, if anything.
fn fields_problem(fields: &ClusterFields, key_required: bool) -> Option<String> {
    let port_ok = fields
        .controller_address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
    if fields.name.is_empty() {
        Some("give the cluster a name".to_owned())
    } else if fields.name.chars().count() > MAX_NAME_CHARS {
        Some(format!("the name is longer than {MAX_NAME_CHARS} characters"))
    } else if !port_ok || fields.controller_address.chars().any(char::is_whitespace) {
        Some("give the controller's address as host:port, for example 10.0.0.5:7700".to_owned())
    } else if key_required && fields.api_key.as_deref().is_none_or(str::is_empty) {
        Some("give the cluster's API key (the controller printed it when it first started)".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(address: &str, key: Option<&str>) -> ClusterFields {
        ClusterFields { name: "lab".into(), controller_address: address.into(), api_key: key.map(Into::into) }
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(fields_problem(&fields("10.0.0.5:7700", Some("k")), true), None);
        assert_eq!(fields_problem(&fields("[::1]:7700", Some("k")), true), None);
        assert!(fields_problem(&fields("10.0.0.5", Some("k")), true).is_some());
        assert!(fields_problem(&fields(":7700", Some("k")), true).is_some());
        assert!(fields_problem(&fields("h:0", Some("k")), true).is_some());
        assert!(fields_problem(&fields("h:7700", None), true).is_some());
        assert_eq!(fields_problem(&fields("h:7700", None), false), None);
    }
}
