//! `ApiJson`: a JSON body extractor whose rejections use the API's error shape and name the field
//! that is wrong. Bodies over 1 MiB are refused with 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::BrokerError;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = BrokerError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = match Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(rejection) => {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(BrokerError::PayloadTooLarge);
                }
                return Err(BrokerError::BadRequest(
                    "the request body could not be read".into(),
                ));
            }
        };
        parse(&bytes).map(ApiJson)
    }
}

/// Parses JSON, naming the field in the error: "field `password`: invalid type: ...".
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BrokerError> {
    if bytes.is_empty() {
        return Err(BrokerError::BadRequest(
            "the request body is empty: send a JSON object".into(),
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = strip_position(&inner.to_string());
        if path == "." || path == "?" || path.is_empty() {
            BrokerError::BadRequest(format!("malformed JSON body: {message}"))
        } else {
            BrokerError::BadRequest(format!("field `{path}`: {message}"))
        }
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message.get(..index).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only parsed")]
    struct Login {
        username: String,
        password: String,
    }

    #[track_caller]
    fn check(input: &str, expect: &str) {
        let error = parse::<Login>(input.as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), expect);
    }

    #[test]
    fn errors_name_the_field() {
        check(
            r#"{"username": "a"}"#,
            "malformed JSON body: missing field `password`",
        );
        check(
            r#"{"username": "a", "password": 5}"#,
            "field `password`: invalid type: integer `5`, expected a string",
        );
        check(
            r#"{"username": "a", "password": "b", "x": 1}"#,
            "field `x`: unknown field `x`, expected `username` or `password`",
        );
        check(
            r#"{"username": "#,
            "field `username`: EOF while parsing a value",
        );
        check(
            "5",
            "malformed JSON body: invalid type: integer `5`, expected struct Login",
        );
        check("{nope", "malformed JSON body: key must be a string");
        check("", "the request body is empty: send a JSON object");
    }
}
