use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use confab_domain::{DomainError, FileId};
use confab_service::files::UploadFailed;
use confab_wire::FileDto;
use utoipa::ToSchema;

use crate::AppState;
use crate::channels::parse_channel_id;
use crate::error::{ApiError, ApiResult, ProblemBody};
use crate::extract::{ApiPath, Auth, AuthOrQueryToken};

/// Multipart form: `channel_id` (text field, first) and `file` (the bytes, with a filename).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    channel_id: String,
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The form is documented with its two fields only: another is a mistake worth saying.
fn unknown_field(name: Option<&str>) -> ApiError {
    let name = name.unwrap_or("");
    DomainError::invalid(
        "form",
        format!("unknown field {name:?}: expected channel_id, then file"),
    )
    .into()
}

fn multipart_err(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::request(status, "body_too_large", e.body_text())
    } else {
        ApiError::request(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
    }
}

/// Uploads a file or image for a channel. Its content type is sniffed from the bytes.
#[utoipa::path(post, path = "/files", security(("master_token" = []), ("session_token" = [])), tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = FileDto), (status = 400, body = ProblemBody),
        (status = 404, description = "no such channel", body = ProblemBody)))]
pub async fn upload(
    State(st): State<AppState>,
    Auth(actor): Auth,
    form: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    // axum answers a missing or wrong content type in plain text; the native API answers in problem JSON.
    let mut form = form.map_err(|_| {
        ApiError::request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: multipart/form-data with a boundary",
        )
    })?;
    let mut channel = None;
    while let Some(field) = form.next_field().await.map_err(multipart_err)? {
        match field.name() {
            Some("channel_id") => {
                let text = field.text().await.map_err(multipart_err)?;
                channel = Some(parse_channel_id(text.trim())?);
            }
            Some("file") => {
                let channel = channel
                    .as_ref()
                    .ok_or_else(|| DomainError::invalid("channel_id", "send the channel_id field before the file"))?;
                let name = field.file_name().unwrap_or("file").to_string();
                let obj = st
                    .service
                    .upload_stream(&actor, channel, &name, field)
                    .await
                    .map_err(|e| match e {
                        UploadFailed::Domain(e) => ApiError::from(e),
                        UploadFailed::Body(e) => multipart_err(e),
                    })?;
                // Nothing may follow the file; its bytes, stored but never named to the client, are swept
                // as any unattached upload.
                if let Some(extra) = form.next_field().await.map_err(multipart_err)? {
                    return Err(unknown_field(extra.name()));
                }
                return Ok((StatusCode::CREATED, Json(FileDto::from(&obj))).into_response());
            }
            // The form is documented with these two fields only; another is a mistake worth saying.
            other => return Err(unknown_field(other)),
        }
    }
    Err(DomainError::invalid("file", "the form has no file field").into())
}

/// Downloads a file. Only members of the channel it was uploaded for may read it.
#[utoipa::path(get, path = "/files/{file_id}", security(("master_token" = []), ("session_token" = [])), tag = "files",
    responses((status = 200, description = "the file's bytes"), (status = 404, body = ProblemBody)))]
pub async fn download(
    State(st): State<AppState>,
    AuthOrQueryToken(actor): AuthOrQueryToken,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = FileId::parse(&id)?;
    let (obj, bytes) = st.service.open_file(&actor, &id).await?;
    let body = Body::from_stream(bytes);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&obj.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(obj.size));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Only images render inline; everything else downloads, so an uploaded HTML file never runs as a page.
    let disposition = if obj.content_type.starts_with("image/") && obj.content_type != "image/svg+xml" {
        "inline"
    } else {
        "attachment"
    };
    let name: String = obj
        .name
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    Ok(resp)
}
