//! The one error type of the HTTP layer, and the one place that maps errors to status codes.
//!
//! Users see a short message on an error page; causes that are the server's fault are logged
//! with `tracing` and shown only as "something went wrong". Another user's object is a 404,
//! exactly like a missing one, so ids reveal nothing.

use std::time::Duration;

use askama::Template;
use salvo::catcher::Catcher;
use salvo::prelude::*;

use super::Page;
use crate::runs::RunError;
use crate::security::PasswordError;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No such page, or the object is someone else's.
    #[error("not found")]
    NotFound,
    /// The page exists but not for this method (a GET-only page was posted to, and the like).
    #[error("this page does not accept {0} requests")]
    MethodNotAllowed(String),
    /// Any other error status that salvo answered before a handler ran.
    #[error("the request could not be handled")]
    Status(StatusCode),
    /// The page needs a logged-in user.
    #[error("please log in")]
    Unauthenticated,
    /// The form's CSRF token is missing or wrong.
    #[error("this form has expired or did not come from this site: reload the page and try again")]
    Csrf,
    /// The request is malformed or asks for something not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// The request came from a page of another site.
    #[error("{0}")]
    Forbidden(String),
    /// An upload is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Too many failed logins.
    #[error("too many failed logins: try again in {} seconds", .0.as_secs().max(1))]
    TooManyAttempts(Duration),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing or checking a password failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// A template failed to render.
    #[error("cannot render the page: {0}")]
    Template(#[from] askama::Error),
    /// Starting or cancelling a run failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Anything else that is the server's fault.
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Status(status) => *status,
            HttpError::Unauthenticated => StatusCode::SEE_OTHER,
            HttpError::Csrf | HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            HttpError::Run(RunError::ClusterUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Run(RunError::Ended) => StatusCode::CONFLICT,
            HttpError::Store(_)
            | HttpError::Password(_)
            | HttpError::Template(_)
            | HttpError::Run(_)
            | HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message users see: the error itself, unless it is the server's fault.
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() && !matches!(self, HttpError::Run(RunError::ClusterUnavailable(_))) {
            "something went wrong on the server; it has been logged".to_owned()
        } else {
            self.to_string()
        }
    }
}

/// The catcher of error responses that have no body yet (no route matched: 404 or 405, or
/// salvo refused the request): they get the app's own error page, in the site's layout.
/// `affix` and `load_session` give the page the app and the session, as routes have them.
pub fn catcher(affix: impl Handler, load_session: impl Handler) -> Catcher {
    Catcher::default().hoop(affix).hoop(load_session).hoop(error_page)
}

#[handler]
async fn error_page(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let error = match res.status_code.unwrap_or(StatusCode::NOT_FOUND) {
        StatusCode::NOT_FOUND => HttpError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => HttpError::MethodNotAllowed(req.method().to_string()),
        status => HttpError::Status(status),
    };
    error.write(req, depot, res).await;
    ctrl.skip_rest();
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    page: Page,
    status: u16,
    message: String,
}

#[async_trait]
impl Writer for HttpError {
    async fn write(self, req: &mut Request, depot: &mut Depot, res: &mut Response) {
        if matches!(self, HttpError::Unauthenticated) {
            res.render(Redirect::other("/users/log_in"));
            return;
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(method = %req.method(), path = req.uri().path(), "request failed: {}", self);
        } else {
            tracing::debug!(method = %req.method(), path = req.uri().path(), status = status.as_u16(), "{}", self);
        }
        if let HttpError::TooManyAttempts(wait) = &self
            && let Ok(value) = salvo::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            res.headers_mut().insert("retry-after", value);
        }
        let reason = status.canonical_reason().unwrap_or("Error");
        let page =
            ErrorPage { page: Page::new(depot, reason, ""), status: status.as_u16(), message: self.public_message() };
        res.status_code(status);
        match page.render() {
            Ok(html) => res.render(Text::Html(html)),
            Err(e) => {
                tracing::error!("cannot render the error page: {e}");
                res.render(Text::Plain(page.message));
            }
        }
    }
}
