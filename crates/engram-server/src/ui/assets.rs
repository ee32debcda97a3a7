//! The dashboard's static files and the API reference, embedded in the
//! binary (`include_bytes!`): nothing is read from disk or fetched at run
//! time. Third-party files and their licences: `assets/vendor/README.md`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, html};

/// The Swagger UI release vendored under `assets/vendor/swagger-ui`.
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

const UI: &[Asset] = &[
    Asset {
        name: "ui.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/ui.css"),
    },
    Asset {
        name: "ui.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/ui.js"),
    },
    Asset {
        name: "favicon.svg",
        mime: "image/svg+xml",
        body: include_bytes!("../../assets/favicon.svg"),
    },
];

const DOCS: &[Asset] = &[
    Asset {
        name: "swagger-ui-bundle.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/vendor/swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        name: "swagger-ui.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/vendor/swagger-ui/swagger-ui.css"),
    },
    Asset {
        name: "docs.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/docs.js"),
    },
    Asset {
        name: "LICENSE",
        mime: "text/plain; charset=utf-8",
        body: include_bytes!("../../assets/vendor/swagger-ui/LICENSE"),
    },
];

fn serve(set: &[Asset], name: &str) -> Response {
    match set.iter().find(|a| a.name == name) {
        Some(a) => {
            let mut resp = a.body.into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
            // Assets change only with the binary; an hour keeps restarts cheap to pick up.
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            resp
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

pub async fn ui_asset(Path(name): Path<String>) -> Response {
    serve(UI, &name)
}

pub async fn docs_asset(Path(name): Path<String>) -> Response {
    serve(DOCS, &name)
}

/// `/docs`: Swagger UI over `/openapi.json` (public, like the document itself).
pub async fn docs_page() -> Response {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "API reference · Engram" }
                link rel="stylesheet" href="/docs/swagger-ui.css";
                link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
                script src="/docs/swagger-ui-bundle.js" defer {}
                script src="/docs/docs.js" defer {}
            }
            body {
                p { a href="/ui" { "← Back to the dashboard" } " · " a href="/openapi.json" { "openapi.json" }
                    " · Swagger UI " (SWAGGER_UI_VERSION) " (" a href="/docs/LICENSE" { "Apache-2.0" } ")" }
                div #swagger {}
            }
        }
    }
    .into_response()
}
