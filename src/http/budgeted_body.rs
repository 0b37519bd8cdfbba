//! A response body that holds its page's share of the response budget until it has been
//! handed to the connection.
//!
//! The body is handed out in chunks of [`CHUNK_BYTES`], each copied out of the rendered page,
//! and hyper asks for the next chunk only when its write buffer has room. So while a client
//! does not read, the page (and its reservation) stays here, accounted; once the last chunk
//! is handed out the page is freed and its bytes given back, and what hyper and the kernel
//! still buffer is bounded per connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::broker::ResponseBytes;

/// Bytes handed to hyper at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// A JSON response whose body keeps `page` reserved until it is handed out or dropped.
pub fn budgeted_json_response(status: StatusCode, body: Vec<u8>, page: ResponseBytes) -> Response {
    let body = BudgetedBody {
        page: Some(page),
        body,
        sent: 0,
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::new(body),
    )
        .into_response()
}

struct BudgetedBody {
    /// Dropped (bytes given back) with the last chunk.
    page: Option<ResponseBytes>,
    body: Vec<u8>,
    /// Bytes of `body` handed out so far.
    sent: usize,
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.sent >= this.body.len() {
            this.page = None;
            return Poll::Ready(None);
        }
        let chunk = if this.sent == 0 && this.body.len() <= CHUNK_BYTES {
            // Small enough to hand over whole, without a copy.
            Bytes::from(std::mem::take(&mut this.body))
        } else {
            let end = (this.sent + CHUNK_BYTES).min(this.body.len());
            Bytes::copy_from_slice(&this.body[this.sent..end])
        };
        this.sent += chunk.len();
        if this.sent >= this.body.len() {
            this.body = Vec::new();
            this.sent = 0;
            this.page = None;
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.page.is_none() || self.sent >= self.body.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.body.len() - self.sent) as u64)
    }
}
