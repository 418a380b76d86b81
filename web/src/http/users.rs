//! Register, log in, log out (`/users/register`, `/users/log_in`, `/users/log_out`).

use std::net::{IpAddr, Ipv4Addr};

use askama::Template;
use salvo::prelude::*;
use serde::Deserialize;

use super::error::HttpError;
use super::{CSRF_FIELD, Page, SESSION_COOKIE, app, check_csrf, cookie, parse_form, redirect, render};
use crate::security::{MAX_PASSWORD_BYTES, hash_password, new_token, password_problem, token_hash, verify_password};
use crate::store::{StoreError, now_ms};

/// The routes under `/users`.
pub fn router() -> Router {
    Router::with_path("users")
        .push(Router::with_path("register").get(register_page).post(register))
        .push(Router::with_path("log_in").get(log_in_page).post(log_in))
        .push(Router::with_path("log_out").post(log_out))
}

#[derive(Template)]
#[template(path = "users/register.html")]
struct RegisterPage {
    page: Page,
    email: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "users/log_in.html")]
struct LogInPage {
    page: Page,
    email: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "csrf_token")]
    csrf: Option<String>,
}

#[handler]
async fn register_page(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let page = RegisterPage { page: Page::new(depot, "Register", ""), email: String::new(), error: None };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn register(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let form: Credentials = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let app = app(depot)?;
    let email = form.email.trim().to_lowercase();
    let problem = if !valid_email(&email) {
        Some("enter an e-mail address such as ada@example.com".to_owned())
    } else {
        let (password, email) = (form.password.clone(), email.clone());
        tokio::task::spawn_blocking(move || password_problem(&password, &email))
            .await
            .map_err(|e| HttpError::Internal(format!("the password check failed: {e}")))?
    };
    if let Some(error) = problem {
        let page = RegisterPage { page: Page::new(depot, "Register", ""), email, error: Some(error) };
        return render(res, StatusCode::UNPROCESSABLE_ENTITY, &page);
    }
    let hash = hash_password(form.password).await?;
    let user = match app.store.create_user(&email, &hash).await {
        Ok(user) => user,
        Err(StoreError::Duplicate(_)) => {
            let error = Some("an account with this e-mail address exists already: log in instead".to_owned());
            let page = RegisterPage { page: Page::new(depot, "Register", ""), email, error };
            return render(res, StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
        Err(e) => return Err(e.into()),
    };
    if app.embedded_cluster {
        app.store.ensure_local_cluster(user.id).await?;
    }
    tracing::info!(user = user.id, "user registered");
    start_session(&app, user.id, res).await?;
    redirect(res, "/tasks");
    Ok(())
}

#[handler]
async fn log_in_page(depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let page = LogInPage { page: Page::new(depot, "Log in", ""), email: String::new(), error: None };
    render(res, StatusCode::OK, &page)
}

#[handler]
async fn log_in(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let form: Credentials = parse_form(req).await?;
    check_csrf(depot, form.csrf.as_deref())?;
    let app = app(depot)?;
    let ip = client_ip(req);
    app.limiter.check(&form.email, ip).map_err(HttpError::TooManyAttempts)?;
    let user = app.store.user_by_email(&form.email).await?;
    let verified = match (&user, form.password.len() <= MAX_PASSWORD_BYTES) {
        (Some(user), true) => verify_password(form.password, user.password_hash.clone()).await?,
        // Spend the same time on unknown addresses, so timing does not tell which exist.
        (None, true) => {
            let _ = hash_password(form.password).await;
            false
        }
        (_, false) => false,
    };
    match user.filter(|_| verified) {
        Some(user) => {
            app.limiter.succeeded(&form.email, ip);
            if app.embedded_cluster {
                app.store.ensure_local_cluster(user.id).await?;
            }
            start_session(&app, user.id, res).await?;
            redirect(res, "/tasks");
            Ok(())
        }
        None => {
            app.limiter.failed(&form.email, ip);
            app.metrics.failed_logins.inc();
            let error = Some("wrong e-mail address or password".to_owned());
            let page = LogInPage { page: Page::new(depot, "Log in", ""), email: form.email.trim().to_owned(), error };
            render(res, StatusCode::UNAUTHORIZED, &page)
        }
    }
}

#[handler]
async fn log_out(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let csrf = req.form::<String>(CSRF_FIELD).await;
    check_csrf(depot, csrf.as_deref())?;
    let app = app(depot)?;
    if let Some(token) = req.cookie(SESSION_COOKIE).map(|cookie| cookie.value().to_owned()) {
        app.store.delete_session(&token_hash(&token)).await?;
    }
    let mut expired = cookie(SESSION_COOKIE, String::new(), app.secure_cookies, Some(std::time::Duration::ZERO));
    expired.make_removal();
    res.add_cookie(expired);
    redirect(res, "/users/log_in");
    Ok(())
}

/// Starts a session for `user_id` and gives the browser its cookie.
async fn start_session(app: &super::App, user_id: i64, res: &mut Response) -> Result<(), HttpError> {
    let token = new_token();
    let ttl_ms = i64::try_from(app.session_ttl.as_millis()).unwrap_or(i64::MAX);
    app.store.create_session(user_id, &token_hash(&token), &new_token(), now_ms().saturating_add(ttl_ms)).await?;
    res.add_cookie(cookie(SESSION_COOKIE, token, app.secure_cookies, Some(app.session_ttl)));
    Ok(())
}

/// The client's address, for the login rate limit.
fn client_ip(req: &Request) -> IpAddr {
    req.remote_addr()
        .as_ipv4()
        .map(|addr| IpAddr::V4(*addr.ip()))
        .or_else(|| req.remote_addr().as_ipv6().map(|addr| IpAddr::V6(*addr.ip())))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A plausible e-mail address: something, an `@`, a domain with a dot, no spaces.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_email_addresses_are_accepted() {
        assert!(valid_email("ada@example.com"));
        for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "ada@.com"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
