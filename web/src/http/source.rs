//! A task's plugin source (`/tasks/{id}/source`): every file of the crate as the builder will
//! see it (a single `lib.rs` inside the scaffold), escaped, with the source's hash, which each
//! run records, so a user can tell which version of the plugin a run used.

use askama::Template;
use salvo::prelude::*;

use super::error::HttpError;
use super::{Page, app, id_param, render, session};
use crate::store::tasks::{PluginContent, PluginKind};

/// The most bytes of one file the page shows.
const SHOWN_BYTES_PER_FILE: usize = 256 << 10;

/// The route of the source page.
pub fn router() -> Router {
    Router::with_path("tasks/{id}/source").get(show)
}

struct SourceFile {
    path: String,
    text: String,
    note: Option<String>,
}

#[derive(Template)]
#[template(path = "tasks/source.html")]
struct SourcePage {
    page: Page,
    task_id: i64,
    task_title: String,
    hash: String,
    files: Vec<SourceFile>,
}

#[handler]
async fn show(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), HttpError> {
    let user = session(depot)?;
    let app = app(depot)?;
    let task = app.store.task(user.user_id, id_param(req)?).await?.ok_or(HttpError::NotFound)?;
    let plugin = app.store.task_plugin(user.user_id, task.id).await?.ok_or(HttpError::NotFound)?;
    let plugin_dir = app.plugin_dir.clone();
    let read = tokio::task::spawn_blocking(move || match (&plugin.content, plugin.kind) {
        (PluginContent::File { file, .. }, _) => kiln_engine::plugin_source::read_source(&plugin_dir.join(file)),
        (PluginContent::Bytes(bytes), PluginKind::RustFile) => {
            kiln_engine::plugin_source::SourceTree::from_single_file(bytes)
        }
        (PluginContent::Bytes(bytes), _) => {
            // Archives saved before plugins were files: read through a temporary copy.
            let dir = tempfile::tempdir().map_err(|e| kiln_engine::plugin_source::SourceError::Io {
                path: std::path::PathBuf::from("a temporary directory"),
                error: e,
            })?;
            let path = dir.path().join(plugin.kind.file_name());
            std::fs::write(&path, bytes)
                .map_err(|error| kiln_engine::plugin_source::SourceError::Io { path: path.clone(), error })?;
            kiln_engine::plugin_source::read_source(&path)
        }
    })
    .await
    .map_err(|e| HttpError::Internal(format!("reading a plugin failed: {e}")))?;
    let tree =
        read.map_err(|e| HttpError::Internal(format!("the stored plugin of task {} cannot be read: {e}", task.id)))?;
    let files = tree
        .paths()
        .map(|path| {
            let bytes = tree.file(path).unwrap_or_default();
            let (text, note) = match std::str::from_utf8(bytes) {
                Ok(text) if text.len() > SHOWN_BYTES_PER_FILE => {
                    let mut end = SHOWN_BYTES_PER_FILE;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    (text[..end].to_owned(), Some(format!("only the first {SHOWN_BYTES_PER_FILE} bytes are shown")))
                }
                Ok(text) => (text.to_owned(), None),
                Err(_) => (String::new(), Some(format!("binary file, {} bytes", bytes.len()))),
            };
            SourceFile { path: path.to_owned(), text, note }
        })
        .collect();
    let page = SourcePage {
        page: Page::new(depot, format!("Source of {}", task.title), "tasks"),
        task_id: task.id,
        task_title: task.title,
        hash: tree.hash(),
        files,
    };
    render(res, StatusCode::OK, &page)
}
