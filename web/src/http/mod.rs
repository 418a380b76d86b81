//! The HTTP side: routes, sessions, CSRF checks and rendering.
//!
//! Each resource has a file with its handlers and a `router()`; handlers parse the request,
//! authorize it, call the store (or the run manager) and render a template. They hold no SQL.
//! Every failure goes through [`error::HttpError`], which picks the status code in one place.
//!
//! # Sessions and CSRF
//! A logged-in browser holds a random session token in the `kiln_session` cookie (HttpOnly,
//! SameSite=Lax); the database keeps its hash and the session's CSRF token. Every form that
//! changes something carries a `csrf_token` field, checked on every POST: against the session's
//! token when logged in, else against the `kiln_csrf` cookie that the login and registration
//! pages set (the double-submit pattern).
//!
//! # Layout
//! - `users`: register, log in, log out.
//! - `account`: change the password, log out everywhere, delete the account.
//! - `tasks`: tasks and starting them; `source`: a task's plugin source.
//! - `clusters`: clusters and their live workers.
//! - `runs`: run pages, the progress websocket, results, cancelling.
//! - `assets`: the stylesheet and scripts, compiled into the binary.
//! - `upload`: streaming multipart uploads to temporary files with size limits.
//! - `error`: the error type and its status codes.
//! - `format`: numbers, sizes, times and durations for pages.
//! - `chart`: the throughput chart of an ended run, as SVG with its axes.

mod account;
mod assets;
mod chart;
mod clusters;
pub mod error;
mod format;
mod runs;
mod source;
mod tasks;
mod upload;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

use askama::Template;
use salvo::http::cookie::{Cookie, SameSite};
use salvo::prelude::*;

use self::error::HttpError;
use crate::metrics::WebMetrics;
use crate::runs::RunManager;
use crate::runs::inputs::InputKeeper;
use crate::security::{LoginLimiter, constant_time_eq, new_token, token_hash};
use crate::store::Store;
use crate::store::sessions::Session;

/// The cookie holding a logged-in browser's session token.
pub const SESSION_COOKIE: &str = "kiln_session";

/// The cookie holding an anonymous browser's CSRF token (login and registration forms).
pub const CSRF_COOKIE: &str = "kiln_csrf";

/// The form field every state-changing form carries.
pub const CSRF_FIELD: &str = "csrf_token";

/// What every handler can reach, injected into each request's depot.
pub struct App {
    /// The database.
    pub store: Store,
    /// Runs in progress and their watchers.
    pub runs: Arc<RunManager>,
    /// Failed logins, for the rate limit.
    pub limiter: LoginLimiter,
    /// Where uploads are spooled while they arrive.
    pub upload_dir: PathBuf,
    /// Where tasks' plugins are kept, one file each (on the same file system as `upload_dir`).
    pub plugin_dir: PathBuf,
    /// The largest input file accepted.
    pub max_input_bytes: u64,
    /// The largest plugin file accepted.
    pub max_plugin_bytes: u64,
    /// How long a session lasts.
    pub session_ttl: std::time::Duration,
    /// How long a session lasts without a request.
    pub session_idle: std::time::Duration,
    /// Where runs' inputs are kept for "Run again".
    pub inputs: InputKeeper,
    /// Where runs' results are kept.
    pub results: crate::runs::results::ResultFiles,
    /// Whether cookies get the `Secure` flag (when served over HTTPS by a proxy).
    pub secure_cookies: bool,
    /// Whether every user is offered the embedded cluster.
    pub embedded_cluster: bool,
    /// What the app counts for its metrics.
    pub metrics: WebMetrics,
}

/// The whole site: its routes with `app` given to every handler, security headers on every
/// response (404 and 405 included, which no route's hoop sees), and the app's own error page
/// for the errors salvo answers itself.
pub fn service(app: Arc<App>) -> Service {
    // The error page's layout names the logged-in user, so the catcher looks up the session
    // too (no route's hoop ran for an unknown URL).
    let catcher = error::catcher(affix(Arc::clone(&app)), load_session);
    let counted = count_requests(app.metrics.clone());
    Service::new(router(app)).hoop(counted).hoop(security_headers).catcher(catcher)
}

/// The whole site's routes, with `app` given to every handler.
fn router(app: Arc<App>) -> Router {
    // Assets need no session: they are served before it is looked up.
    let pages = Router::new()
        .hoop(affix(app))
        .hoop(load_session)
        .get(home)
        .push(users::router())
        .push(account::router())
        .push(source::router())
        .push(tasks::router())
        .push(clusters::router())
        .push(runs::router());
    Router::new().push(assets::router()).push(pages)
}

/// A handler that injects the app into the depot.
fn affix(app: Arc<App>) -> impl Handler {
    struct Affix(Arc<App>);
    #[async_trait]
    impl Handler for Affix {
        async fn handle(&self, _req: &mut Request, depot: &mut Depot, _res: &mut Response, _ctrl: &mut FlowCtrl) {
            depot.insert_typed(Arc::clone(&self.0));
        }
    }
    Affix(app)
}

/// A handler that counts every request and its time in the metrics.
fn count_requests(metrics: WebMetrics) -> impl Handler {
    struct Count(WebMetrics);
    #[async_trait]
    impl Handler for Count {
        async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
            let started = std::time::Instant::now();
            ctrl.call_next(req, depot, res).await;
            let status = res.status_code.unwrap_or(StatusCode::OK).as_u16();
            self.0.record_request(req.method().as_str(), status, started.elapsed().as_secs_f64());
        }
    }
    Count(metrics)
}

/// Headers that keep pages from being framed, sniffed or running scripts from elsewhere: all
/// scripts are files under `/static/`, so even a missed escape could not run inline code. A
/// hoop of the service, so it runs before routing, for every response.
#[handler]
async fn security_headers(res: &mut Response) {
    let headers = res.headers_mut();
    let set = |headers: &mut salvo::http::HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, salvo::http::HeaderValue::from_static(value));
    };
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "same-origin");
    set(
        headers,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    );
}

/// Finds the request's session, if any, and the CSRF token its forms must carry.
#[handler]
async fn load_session(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let app = app(depot)?;
    let token = req.cookie(SESSION_COOKIE).map(|cookie| cookie.value().to_owned());
    let session = match token {
        Some(token) if !token.is_empty() => {
            let idle_ms = i64::try_from(app.session_idle.as_millis()).unwrap_or(i64::MAX);
            app.store.session(&token_hash(&token), idle_ms).await?
        }
        _ => None,
    };
    match session {
        Some(session) => {
            depot.insert_typed(Csrf(session.csrf_token.clone()));
            depot.insert_typed(session);
        }
        None => {
            let existing = req.cookie(CSRF_COOKIE).map(|cookie| cookie.value().to_owned()).filter(|t| t.len() == 64);
            let csrf = match existing {
                Some(token) => token,
                None => {
                    let token = new_token();
                    res.add_cookie(cookie(CSRF_COOKIE, token.clone(), app.secure_cookies, None));
                    token
                }
            };
            depot.insert_typed(Csrf(csrf));
        }
    }
    Ok(())
}

/// `/` leads to the tasks.
#[handler]
async fn home(res: &mut Response) {
    res.render(Redirect::other("/tasks"));
}

/// The CSRF token of the request's forms.
#[derive(Debug, Clone)]
struct Csrf(String);

/// The app, from the depot.
fn app(depot: &Depot) -> Result<Arc<App>, HttpError> {
    depot.get_typed::<Arc<App>>().cloned().map_err(|_| HttpError::Internal("the app is missing from the depot".into()))
}

/// The logged-in user's session, or a redirect to the login page.
fn session(depot: &Depot) -> Result<Session, HttpError> {
    depot.get_typed::<Session>().cloned().map_err(|_| HttpError::Unauthenticated)
}

/// The CSRF token the request's forms must carry.
fn csrf_token(depot: &Depot) -> String {
    depot.get_typed::<Csrf>().map(|csrf| csrf.0.clone()).unwrap_or_default()
}

/// Refuses the request unless `sent` is this browser's CSRF token.
fn check_csrf(depot: &Depot, sent: Option<&str>) -> Result<(), HttpError> {
    let expected = csrf_token(depot);
    match sent {
        Some(sent) if !expected.is_empty() && constant_time_eq(sent, &expected) => Ok(()),
        _ => Err(HttpError::Csrf),
    }
}

/// A cookie for this site: HttpOnly, SameSite=Lax, path `/`.
fn cookie(name: &'static str, value: String, secure: bool, max_age: Option<std::time::Duration>) -> Cookie<'static> {
    let mut builder = Cookie::build((name, value)).path("/").http_only(true).same_site(SameSite::Lax).secure(secure);
    if let Some(max_age) = max_age {
        builder = builder.max_age(salvo::http::cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
        ));
    }
    builder.build()
}

/// What the layout shows on every page.
pub struct Page {
    /// The page's title.
    pub title: String,
    /// The logged-in user's e-mail address.
    pub user: Option<String>,
    /// The CSRF token for the page's forms (the log-out button among them).
    pub csrf: String,
    /// Which menu entry is current: `tasks`, `clusters` or empty.
    pub section: &'static str,
}

impl Page {
    /// The layout's data for a page titled `title` in `section`.
    fn new(depot: &Depot, title: impl Into<String>, section: &'static str) -> Page {
        Page {
            title: title.into(),
            user: depot.get_typed::<Session>().ok().map(|s| s.email.clone()),
            csrf: csrf_token(depot),
            section,
        }
    }
}

/// Renders a template as the response's HTML, with `status`.
fn render(res: &mut Response, status: StatusCode, template: &impl Template) -> Result<(), HttpError> {
    let html = template.render()?;
    res.status_code(status);
    res.render(Text::Html(html));
    Ok(())
}

/// Answers with a "303 See Other" to `path`.
fn redirect(res: &mut Response, path: &str) {
    res.render(Redirect::other(path));
}

/// The `{id}` of the path, or 404.
fn id_param(req: &Request) -> Result<i64, HttpError> {
    req.param::<String>("id").and_then(|id| id.parse::<i64>().ok()).filter(|id| *id > 0).ok_or(HttpError::NotFound)
}

/// Parses an url-encoded form (at most salvo's 64 KiB).
async fn parse_form<T: for<'de> serde::Deserialize<'de>>(req: &mut Request) -> Result<T, HttpError> {
    req.parse_form::<T>().await.map_err(|e| HttpError::BadRequest(format!("the form could not be read: {e}")))
}
