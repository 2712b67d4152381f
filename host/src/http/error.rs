//! Why a request was not served, and its one conversion into a response:
//! a status, a JSON body `{"error": code, "message": text}` with a stable
//! code for programs and a sentence for people, and the header the status
//! calls for. Every refusal of every route goes through here (as axum's
//! `IntoResponse`).

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::Reply;

#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    /// `WWW-Authenticate` for a 401, `Allow` for a 405, and the like:
    /// a lowercase name and its value (static strings keep the error small,
    /// as every route returns it).
    header: Option<(&'static str, &'static str)>,
}

impl HttpError {
    pub(crate) fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> HttpError {
        HttpError {
            status,
            code: code.into(),
            message: message.into(),
            header: None,
        }
    }

    /// A `400`.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A `503`: the server cannot take this now.
    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: &'static str) -> HttpError {
        self.header = Some((name, value));
        self
    }

    /// The response as HTTP/1.1 bytes, with `Connection: close`: for a
    /// connection refused before hyper serves it.
    pub(crate) fn into_http1_bytes(self) -> Vec<u8> {
        let body = self.body().to_string();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some((name, value)) = self.header {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }

    /// `{"error": code, "message": text}`.
    fn body(&self) -> serde_json::Value {
        json!({"error": self.code, "message": self.message})
    }

    pub(crate) fn into_response(self) -> Reply {
        let mut resp = json_reply(self.status, &self.body());
        if let Some((name, value)) = self.header {
            resp.headers_mut().insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        resp
    }
}

/// A response with a JSON body.
pub(crate) fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
