//! Captions in the space API: the view says whether captions run on this
//! node (and why not), and the host turns them on or off with
//! `PATCH /api/v1/spaces/{id}` `{"captions": true|false}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use amphi_core::SpaceId;
use amphi_core::room::Command;

use crate::app::{App, SpaceCell};
use crate::auth::Token;
use crate::body::ApiJson;
use crate::error::ApiError;

/// The space's public view, with `captions_available` (and
/// `captions_unavailable_reason` when not) and, for a captioned space, where
/// its cues and transcript are.
pub fn view(app: &App, cell: &SpaceCell) -> Value {
    let mut v = cell.view();
    let id = cell.id;
    if let Some(o) = v.as_object_mut() {
        let why = app.captions.unavailable_reason();
        o.insert("captions_available".into(), json!(why.is_none()));
        if let Some(why) = why {
            o.insert("captions_unavailable_reason".into(), json!(why));
        }
        if o.get("captions") == Some(&json!(true)) && why.is_none() {
            o.insert(
                "transcript".into(),
                json!({
                    "live": format!("/api/v1/spaces/{id}/captions"),
                    "vtt": format!("/spaces/{id}/transcript.vtt"),
                    "json": format!("/spaces/{id}/transcript.json"),
                }),
            );
        }
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    captions: Option<bool>,
}

/// `PATCH /api/v1/spaces/{id}`: the host changes the space's settings
/// (today: `captions`), persisted as every command is.
pub async fn patch(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    token: Token,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<Value>, ApiError> {
    let id: SpaceId = id
        .parse()
        .map_err(|_| ApiError::not_found("no such space"))?;
    let cell = app.space(id)?;
    let claims = app.verify(id, &token.0)?;
    if let Some(on) = body.captions {
        app.command(&cell, &claims, Command::SetCaptions { on })
            .await?;
    }
    Ok(Json(view(&app, &cell)))
}
