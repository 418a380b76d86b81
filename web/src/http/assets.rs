//! The stylesheet and scripts under `/static/`, compiled into the binary so that `kiln-web`
//! is one file to copy. Plain CSS and JavaScript: no build step.

use salvo::prelude::*;

const APP_CSS: &str = include_str!("../../static/app.css");
const RUN_JS: &str = include_str!("../../static/run.js");
const FORMS_JS: &str = include_str!("../../static/forms.js");

/// The routes under `/static`.
pub fn router() -> Router {
    Router::with_path("static/{file}").get(asset)
}

#[handler]
async fn asset(req: &mut Request, res: &mut Response) {
    let file = req.param::<String>("file").unwrap_or_default();
    let (body, content_type) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "run.js" => (RUN_JS, "text/javascript; charset=utf-8"),
        "forms.js" => (FORMS_JS, "text/javascript; charset=utf-8"),
        _ => {
            res.status_code(StatusCode::NOT_FOUND);
            return;
        }
    };
    let headers = res.headers_mut();
    headers.insert("content-type", salvo::http::HeaderValue::from_static(content_type));
    headers.insert("cache-control", salvo::http::HeaderValue::from_static("no-cache"));
    res.write_body(body).ok();
}
