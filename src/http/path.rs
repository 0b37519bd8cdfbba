//! Path parameters, with axum's rejections turned into problem+json.
//!
//! axum's own `Path` answers a bad parameter (bytes that are not UTF-8 after percent-decoding)
//! with `text/plain`; every failure of this API is a problem with a stable `code`. A topic or
//! group name that is not UTF-8 is an invalid name (`invalid_topic_name`,
//! `invalid_group_name`); any other parameter, `invalid_request`.

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The path parameters of a route, deserialized as `T`; a rejection is an [`ApiError`].
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> ApiError {
    let code = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } if key == "topic" => "invalid_topic_name",
            ErrorKind::InvalidUtf8InPathParam { key } if key == "group" => "invalid_group_name",
            _ => "invalid_request",
        },
        _ => "invalid_request",
    };
    ApiError::new(rejection.status(), code, rejection.body_text())
}
