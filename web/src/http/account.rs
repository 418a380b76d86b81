//! The logged-in user's account (`/users/account`): change the password (which ends every
//! other session), log out of every session, delete the account with all its data.
//!
//! Each form carries the CSRF token; changing the password and deleting the account also ask
//! for the current password, so a session left open on someone else's screen cannot take the
//! account over or destroy it.

use askama::Template;
use salvo::prelude::*;
use serde::Deserialize;

use super::error::HttpError;
use super::{App, Page, SESSION_COOKIE, app, check_csrf, cookie, parse_form, redirect, render, session};
use crate::security::{MAX_PASSWORD_BYTES, hash_password, password_problem, verify_password};
use crate::store::runs::RunsOf;
use crate::store::sessions::Session;

/// The routes under `/users` for the account.
pub fn router() -> Router {
    Router::with_path("users")
        .push(Router::with_path("account").get(account_page))
        .push(Router::with_path("password").post(change_password))
        .push(Router::with_path("log_out_everywhere").post(log_out_everywhere))
        .push(Router::with_path("delete").post(delete_account))
}

#[derive(Template)]
#[template(path = "users/account.html")]
struct AccountPage {
    page: Page,
    email: String,
    /// What the last form did, or why it was refused, and which form it was.
    notice: Option<String>,
    error: Option<String>,
    form: &'static str,
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default, rename = "csrf_token")]
    csrf: Option<String>,
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    password: String,
    #[serde(default, rename = "csrf_token")]
    csrf: Option<String>,
}

fn page(
    depot: &Depot,
    user: &Session,
    form: &'static str,
    notice: Option<String>,
    error: Option<String>,
) -> AccountPage {
    AccountPage { page: Page::new(depot, "Your account", "account"), email: user.email.clone(), notice, error, form }
}

#[handler]
async fn account_page(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let notice = match req.query::<String>("done").as_deref() {
        Some("password") => Some("Your password is changed; your other sessions are logged out.".to_owned()),
        _ => None,
    };
    render(res, StatusCode::OK, &page(depot, &user, "", notice, None))
}

/// Whether `password` is the user's.
async fn password_matches(app: &App, user: &Session, password: String) -> Result<bool, HttpError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let stored = app.store.user(user.user_id).await?.ok_or(HttpError::Unauthenticated)?;
    Ok(verify_password(password, stored.password_hash).await?)
}

#[handler]
async fn change_password(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let form: PasswordForm = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let app = app(depot)?;
    let refuse = |depot: &Depot, res: &mut Response, status, error: &str| {
        render(res, status, &page(depot, &user, "password", None, Some(error.to_owned())))
    };
    if !password_matches(&app, &user, form.current_password).await? {
        return refuse(depot, res, StatusCode::UNAUTHORIZED, "the current password is not right");
    }
    let problem = {
        let (password, email) = (form.new_password.clone(), user.email.clone());
        tokio::task::spawn_blocking(move || password_problem(&password, &email))
            .await
            .map_err(|e| HttpError::Internal(format!("the password check failed: {e}")))?
    };
    if let Some(problem) = problem {
        return refuse(depot, res, StatusCode::UNPROCESSABLE_ENTITY, &problem);
    }
    let hash = hash_password(form.new_password).await?;
    app.store.set_password_hash(user.user_id, &hash).await?;
    // Whoever knew the old password may hold a session: only this one stays.
    let ended = app.store.delete_user_sessions(user.user_id, Some(user.id)).await?;
    tracing::info!(user = user.user_id, sessions_ended = ended, "password changed");
    redirect(res, "/users/account?done=password");
    Ok(())
}

#[handler]
async fn log_out_everywhere(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let form: ConfirmForm = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let app = app(depot)?;
    let ended = app.store.delete_user_sessions(user.user_id, None).await?;
    tracing::info!(user = user.user_id, sessions_ended = ended, "logged out of every session");
    forget_cookie(&app, res);
    redirect(res, "/users/log_in");
    Ok(())
}

#[handler]
async fn delete_account(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let form: ConfirmForm = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let app = app(depot)?;
    if !password_matches(&app, &user, form.password).await? {
        let error = Some("the password is not right: the account is kept".to_owned());
        return render(res, StatusCode::UNAUTHORIZED, &page(depot, &user, "delete", None, error));
    }
    // No job of a deleted account goes on running on a cluster.
    super::tasks::cancel_runs(&app, user.user_id, app.store.user_runs(user.user_id, None, i64::MAX).await?).await;
    let files = app.store.user_plugin_files(user.user_id).await?;
    let inputs = app.store.user_run_input_files(user.user_id).await?;
    let results = app.store.run_result_files(RunsOf::User(user.user_id)).await?;
    app.store.delete_user(user.user_id).await?;
    for file in files {
        super::tasks::remove_plugin_named(&app, &file).await;
    }
    app.inputs.remove(&inputs).await;
    app.results.remove(&results).await;
    tracing::info!(user = user.user_id, "account deleted");
    forget_cookie(&app, res);
    redirect(res, "/users/register");
    Ok(())
}

/// Tells the browser to drop its session cookie.
fn forget_cookie(app: &App, res: &mut Response) {
    let mut expired = cookie(SESSION_COOKIE, String::new(), app.secure_cookies, Some(std::time::Duration::ZERO));
    expired.make_removal();
    res.add_cookie(expired);
}
