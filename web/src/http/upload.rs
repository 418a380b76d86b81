//! Multipart form uploads, streamed: files go to temporary files in the upload directory as
//! they arrive, with a size limit per file field, so an input of a gigabyte never sits in
//! memory. Text fields are small and kept in memory.
//!
//! The CSRF token must come before the first file (forms put the hidden field first): a form
//! from elsewhere is refused before a byte of its files is written. When a file is too large,
//! the rest of the request is read and discarded (up to [`MAX_DRAIN_BYTES`]) so that the
//! browser, which sends the whole body before it reads an answer, gets to see the message
//! instead of a reset connection.

use std::collections::HashMap;
use std::path::Path;

use futures::StreamExt;
use salvo::http::body::ReqBody;
use salvo::prelude::*;
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use super::error::HttpError;
use super::format;

/// The longest text field: titles, descriptions, parameters.
pub const MAX_TEXT_FIELD_BYTES: usize = 64 << 10;

/// How much of an oversized request is read and thrown away so that the message reaches the
/// browser; beyond that the connection is simply closed.
pub const MAX_DRAIN_BYTES: u64 = 256 << 20;

/// A file field and the most bytes it may hold.
#[derive(Debug, Clone, Copy)]
pub struct FileLimit {
    /// The field's name.
    pub field: &'static str,
    /// What it is, for the message: "the plugin", "the input".
    pub what: &'static str,
    /// The most bytes accepted.
    pub max_bytes: u64,
}

/// A file that arrived, in a temporary file deleted when this is dropped.
#[derive(Debug)]
pub struct UploadedFile {
    /// The name the browser gave (the base name only).
    pub file_name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is.
    pub path: TempPath,
}

/// The fields of a multipart form.
#[derive(Debug, Default)]
pub struct Form {
    /// Text fields by name (the last one wins).
    pub texts: HashMap<String, String>,
    /// Files by field name; a file field left empty is absent.
    pub files: HashMap<String, UploadedFile>,
}

impl Form {
    /// A text field, trimmed, or "".
    pub fn text(&self, name: &str) -> &str {
        self.texts.get(name).map_or("", |text| text.trim())
    }
}

/// Reads a multipart form, streaming its files into `dir`. `csrf` checks the CSRF field,
/// which must come before any file; `limits` lists the file fields accepted.
pub async fn read_form(
    req: &mut Request,
    dir: &Path,
    limits: &[FileLimit],
    csrf: impl Fn(Option<&str>) -> Result<(), HttpError>,
) -> Result<Form, HttpError> {
    let content_type = req.header::<String>("content-type").unwrap_or_default();
    let boundary = multra::parse_boundary(&content_type)
        .map_err(|_| HttpError::BadRequest("expected a multipart/form-data form".to_owned()))?;
    let body = req.take_body();
    let mut multipart = multra::Multipart::new(data_stream(body), boundary);
    let mut form = Form::default();
    let mut csrf_checked = false;
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let Some(file_name) = field.file_name().map(base_name) else {
            let mut text = Vec::new();
            while let Some(piece) = field.chunk().await.map_err(malformed)? {
                if text.len() + piece.len() > MAX_TEXT_FIELD_BYTES {
                    drain(&mut multipart, Some(field)).await;
                    return Err(HttpError::TooLarge(format!(
                        "the field `{name}` is longer than {}",
                        format::bytes(MAX_TEXT_FIELD_BYTES as i64)
                    )));
                }
                text.extend_from_slice(&piece);
            }
            let text = String::from_utf8(text)
                .map_err(|_| HttpError::BadRequest(format!("the field `{name}` is not UTF-8 text")))?;
            form.texts.insert(name, text);
            continue;
        };
        if !csrf_checked {
            csrf(form.texts.get(super::CSRF_FIELD).map(String::as_str))?;
            csrf_checked = true;
        }
        let Some(limit) = limits.iter().find(|limit| limit.field == name) else {
            return Err(HttpError::BadRequest(format!("unexpected file field `{name}`")));
        };
        let path = tokio::task::spawn_blocking({
            let dir = dir.to_owned();
            move || tempfile::Builder::new().prefix("upload-").tempfile_in(dir).map(|file| file.into_temp_path())
        })
        .await
        .map_err(|e| HttpError::Internal(format!("cannot create an upload file: {e}")))?
        .map_err(|e| HttpError::Internal(format!("cannot create an upload file in {}: {e}", dir.display())))?;
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| HttpError::Internal(format!("cannot write the upload file: {e}")))?;
        let mut size = 0u64;
        while let Some(piece) = field.chunk().await.map_err(malformed)? {
            size += piece.len() as u64;
            if size > limit.max_bytes {
                drop(file);
                drain(&mut multipart, Some(field)).await;
                return Err(HttpError::TooLarge(format!(
                    "{} is too large: at most {} is accepted",
                    limit.what,
                    format::bytes(i64::try_from(limit.max_bytes).unwrap_or(i64::MAX))
                )));
            }
            file.write_all(&piece)
                .await
                .map_err(|e| HttpError::Internal(format!("cannot write the upload file: {e}")))?;
        }
        file.flush().await.map_err(|e| HttpError::Internal(format!("cannot write the upload file: {e}")))?;
        // A file input left empty still sends a field, with no name and no bytes.
        if !(file_name.is_empty() && size == 0) {
            form.files.insert(name, UploadedFile { file_name, size, path });
        }
    }
    if !csrf_checked {
        csrf(form.texts.get(super::CSRF_FIELD).map(String::as_str))?;
    }
    Ok(form)
}

/// The request body's data frames as a stream of bytes.
fn data_stream(body: ReqBody) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    body.filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(e)),
        }
    })
}

/// Reads and discards the rest of the form, up to [`MAX_DRAIN_BYTES`].
async fn drain<'r>(multipart: &mut multra::Multipart<'r>, mut field: Option<multra::Field<'r>>) {
    let mut drained = 0u64;
    loop {
        if let Some(current) = field.as_mut() {
            while let Ok(Some(piece)) = current.chunk().await {
                drained += piece.len() as u64;
                if drained > MAX_DRAIN_BYTES {
                    return;
                }
            }
        }
        drop(field.take());
        match multipart.next_field().await {
            Ok(Some(next)) => field = Some(next),
            _ => return,
        }
    }
}

/// The last component of a file name a browser sent (some send a whole path).
fn base_name(name: &str) -> String {
    name.rsplit(['/', '\\']).next().unwrap_or("").to_owned()
}

fn malformed(error: multra::Error) -> HttpError {
    HttpError::BadRequest(format!("the form could not be read: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_base_name_of_a_file_is_kept() {
        assert_eq!(base_name("C:\\Users\\me\\lib.rs"), "lib.rs");
        assert_eq!(base_name("../../etc/passwd"), "passwd");
        assert_eq!(base_name("input.txt"), "input.txt");
    }
}
