//! The OpenAPI 3.1 description of `/api/v1`, served at `/api/v1/openapi.json`.

use serde_json::{Value, json};

fn op(summary: &str, role: &str, responses: Value) -> Value {
    json!({ "summary": summary, "description": format!("Needs: {role}."), "responses": responses })
}

fn with_body(mut operation: Value, schema: Value) -> Value {
    operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    operation
}

pub fn document() -> Value {
    let mut doc = document_without_firmware();
    for extra in [firmware_paths(), whep_paths()] {
        if let (Some(paths), Value::Object(extra)) = (doc["paths"].as_object_mut(), extra) {
            paths.extend(extra);
        }
    }
    doc
}

fn document_without_firmware() -> Value {
    let ok = |d: &str| json!({ "200": { "description": d } });
    let change = json!({
        "200": { "description": "Applied: {revision, changed, pending_confirm}" },
        "400": { "description": "The body is not JSON" },
        "401": { "description": "Not logged in" },
        "403": { "description": "Role too low, initial password unchanged, or foreign Origin" },
        "409": { "description": "The configuration changed since the revision given in the body" },
        "422": { "description": "Validation failed: {error, fields: [{path, message}]}" }
    });
    let section_param = json!([{ "name": "section", "in": "path", "required": true,
        "schema": { "type": "string", "enum": branchgate_config::SECTIONS } }]);
    let rev_param =
        json!([{ "name": "rev", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 1 } }]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "branchgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Log in with POST /session; the session cookie authorises the rest. \
    State-changing requests from a foreign Origin are refused with 403. Secrets read back as \"********\"; \
    sending that value (or leaving the field out) keeps the stored secret."
        },
        "paths": {
            "/api/v1/session": {
                "post": with_body(op("Log in", "nothing", json!({
                    "200": {"description": "Logged in; sets the session cookie"},
                    "401": {"description": "Wrong username or password"},
                    "429": {"description": "Too many failures from this address (Retry-After)"}})),
                    json!({"type": "object", "required": ["username", "password"],
                           "properties": {"username": {"type": "string"}, "password": {"type": "string"}}})),
                "get": op("Who is logged in", "a session", ok("{username, role, must_change_password}")),
                "delete": op("Log out", "a session", json!({"204": {"description": "Logged out"}}))
            },
            "/api/v1/session/password": {
                "put": with_body(op("Change the own password", "a session", change.clone()),
                    json!({"type": "object", "required": ["current_password", "new_password"],
                           "properties": {"current_password": {"type": "string"}, "new_password": {"type": "string", "minLength": 10}}}))
            },
            "/api/v1/config": { "get": op("The whole configuration with its revision (secrets redacted)", "viewer", ok("A configuration document")) },
            "/api/v1/config/{section}": {
                "parameters": section_param,
                "get": op("One section, with the current revision as `revision`", "viewer", ok("The section")),
                "put": with_body(op("Change a section: fields given replace the stored ones, others are kept. \
    An optional `revision` field refuses the change (409) if the configuration moved on. Changes to `network` or the admin \
    certificate roll back after admin.confirm_timeout_seconds (90 s) unless confirmed (POST /config/confirm).", "installer (admin for `admin`)", change.clone()),
                    json!({"type": "object"}))
            },
            "/api/v1/config/revisions": { "get": op("Revision history, newest first", "viewer", ok("{current, revisions}")) },
            "/api/v1/config/revisions/{rev}": { "parameters": rev_param.clone(),
                "get": op("A revision with its changes from the previous one", "viewer", ok("{info, config, changes}")) },
            "/api/v1/config/revisions/{rev}/restore": { "parameters": rev_param,
                "post": op("Apply an older revision as a new one", "installer", change.clone()) },
            "/api/v1/config/confirm": { "post": op("Keep a change that waits for confirmation; an optional body {\"revision\": N} confirms only that revision (409 otherwise)", "installer",
                json!({"200": {"description": "Confirmed"}, "409": {"description": "Nothing pending"}})) },
            "/api/v1/config/export": { "get": { "summary": "Download a backup; `include_secrets=true` adds plain secrets",
                "description": "Needs: admin.",
                "parameters": [{"name": "include_secrets", "in": "query", "schema": {"type": "boolean"}}],
                "responses": ok("A configuration document") } },
            "/api/v1/config/import": { "post": with_body(op("Restore a backup (max 1 MiB)", "admin", change),
                json!({"type": "object"})) },
            "/api/v1/status": { "get": op("Health; details when logged in", "nothing", ok("{status, version, uptime_seconds, ...}")) },
            "/api/v1/logs": { "get": { "summary": "Recent log lines", "description": "Needs: viewer.",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}},
                               {"name": "level", "in": "query", "schema": {"type": "string", "enum": ["error", "warn", "info", "debug"]}}],
                "responses": ok("{lines}") } },
            "/api/v1/audit": { "get": op("Audit log of changes and logins", "admin", ok("{entries}")) },
            "/api/v1/users": {
                "get": op("Admin UI accounts", "admin", ok("{users}")),
                "post": with_body(op("Add an account (must change its password at first login)", "admin",
                    json!({"201": {"description": "Added"}, "409": {"description": "Exists"}, "422": {"description": "Weak password"}})),
                    json!({"type": "object", "required": ["username", "role", "password"],
                           "properties": {"username": {"type": "string"}, "role": {"enum": ["viewer", "installer", "admin"]},
                                          "password": {"type": "string"}}}))
            },
            "/api/v1/users/{username}": { "parameters": [{"name": "username", "in": "path", "required": true, "schema": {"type": "string"}}],
                "delete": op("Delete an account", "admin", ok("Deleted")) },
            "/api/v1/tls": { "put": with_body(op("Install the admin certificate (PEM); applied without restart", "admin",
                json!({"200": {"description": "Installed, waiting for confirmation"}, "422": {"description": "Not a matching pair"}})),
                json!({"type": "object", "required": ["certificate", "private_key"],
                       "properties": {"certificate": {"type": "string"}, "private_key": {"type": "string"}}})) },
            "/api/v1/turn/allocations": { "get": op("Live TURN allocations", "viewer", ok("{running, allocations, stats}")) },
            "/api/v1/sip/registrations": { "get": op("Registered SIP contacts", "viewer", ok("{registrations: [{user, contact, source, transport, expires_in}]}")) },
            "/api/v1/sip/calls": { "get": op("Calls in progress and the trunks' keepalive state", "viewer",
                ok("{calls: [{id, caller, callee, destination, state, age_seconds, packets_a_to_b, packets_b_to_a, caller_media, callee_media}] (each media: {codec, webrtc, transcoded, packets, lost, loss_percent, jitter_ms, mos} or null), trunks: [{name, address, up}]}")) },
            "/api/v1/sip/calls/{id}": { "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "delete": op("Hang up a call (BYE to both legs, or 480 to the caller before answer)", "installer",
                    json!({"204": {"description": "Hung up"}, "404": {"description": "No such call"}, "503": {"description": "SIP not running"}})) },
            "/api/v1/sip/cdr.csv": { "get": op("Call detail records as CSV (call, start, answer, end, duration_seconds, caller, callee, destination, status, cause)", "viewer", ok("text/csv")) },
            "/api/v1/cameras": { "get": op("The cameras: an array of {id, name, simulated, device, width, height, whep, encoder_running, viewers}; a simulated one where the box has none", "viewer", ok("[camera]")) },
            "/api/v1/devices": { "get": op("Every device and whether it is simulated: {cameras (as /api/v1/cameras), audio {backend, simulated, devices [{id, card, name, capture, playback, simulated}], mixers [{card, control, volume_percent, muted}]}, gpio {pins [{role, backend, simulated, chip, offset, name, level}], led_pattern, reset_armed}, watchdog {kind: device|systemd|simulated, simulated, device, identity, timeout_seconds, pets, last_pet_unix_ms, petting}, watchdogs [...]}", "viewer", ok("devices")) },
            "/api/v1/cameras/{id}/snapshot.jpg": { "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": op("A JPEG snapshot", "viewer", json!({"200": {"description": "image/jpeg"}, "404": {"description": "No such camera"}, "503": {"description": "The camera gave no picture (busy, failed, no decoder), with the reason"}})) },
            "/api/v1/recordings": { "get": op("Camera recordings, newest first: {recordings: [{camera, name, size_bytes, modified, url}], total_bytes, settings (cameras.recording)}", "viewer", ok("recordings")) },
            "/api/v1/recordings/{camera}/{name}": { "parameters": [{"name": "camera", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": op("A recording file (video/mp4 or video/x-matroska), streamed", "viewer",
                    json!({"200": {"description": "The file"}, "400": {"description": "Not a recording name"}, "404": {"description": "No such recording"}})),
                "delete": op("Delete a recording", "installer",
                    json!({"204": {"description": "Deleted"}, "400": {"description": "Not a recording name"}, "404": {"description": "No such recording"}})) },
            "/api/v1/openapi.json": { "get": op("This document", "nothing", ok("OpenAPI 3.1")) }
        }
    })
}

/// The firmware paths (a separate `json!`: one macro for the whole document hits the recursion limit).
fn firmware_paths() -> Value {
    let ok = |d: &str| json!({ "200": { "description": d } });
    json!({
            "/api/v1/firmware": { "get": op("Firmware slots and what the box accepts: {backend, compatible, running_version, booted, pending_reboot, \
    slots: [{name, version, state, booted, good}], install, hawkbit: {controller, last_poll_ms, last_error, action}}", "viewer", ok("The slot table")) },
            "/api/v1/firmware/bundle": { "post": {
                "summary": "Upload a signed RAUC verity bundle as the raw body (streamed to the data directory, at most 1 GiB). \
    It is verified (signature against the vendor keyring DATA_DIR/firmware/keyring.pem, payload against the signed verity root hash), \
    checked (`compatible`, no downgrade unless update.allow_downgrade or `force`), then installed into the inactive slot in the background",
                "description": "Needs: installer (`force=true`: admin).",
                "parameters": [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                "responses": {
                    "202": { "description": "Accepted; installing: {version, compatible, build, bytes, progress}" },
                    "400": { "description": "Not a bundle (truncated or another file): {error, reason: not_a_bundle}" },
                    "401": { "description": "Not logged in" },
                    "403": { "description": "Role too low, initial password unchanged, or foreign Origin" },
                    "409": { "description": "Another bundle is being received or installed" },
                    "413": { "description": "Larger than 1 GiB" },
                    "422": { "description": "Refused: {error, reason} with reason bad_signature, untrusted, tampered, manifest, unsupported, incompatible or downgrade" },
                    "503": { "description": "No keyring on the box" }
                } } },
            "/api/v1/firmware/install": { "get": op("The install in progress or the last one: {state: idle|receiving|verifying|installing|done|failed, \
    progress: 0-100, version, slot, last_error}", "viewer", ok("Install status")) },
            "/api/v1/system/reboot": { "post": op("Reboot into the slot installed last. On the simulated backend (no RAUC) the request is \
    recorded as pending_reboot and the daemon keeps running", "admin",
                json!({"202": {"description": "Rebooting (or recorded): {slot, simulated}"}, "409": {"description": "Nothing installed, or an install is running"}})) },
            "/api/v1/firmware/history": { "get": {
                "summary": "The update history, newest first: [{at_ms, event, version, slot, by, message, simulated}] with event refused, installing, \
    installed, install_failed, interrupted, reboot, slot_activated, booted, marked_good, health_failed, fallback or factory_reset. \
    Kept across updates and factory resets (DATA_DIR/firmware/history.jsonl)",
                "description": "Needs: viewer.",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": { "200": { "description": "History entries" }, "400": { "description": "limit is not a number from 1 to 500" } } } },
            "/api/v1/firmware/slots/{slot}/activate": { "post": {
                "summary": "Boot this slot next (A or B): the booted slot cancels a pending switch, the other slot must hold an installed version. \
    Takes effect at the next reboot",
                "description": "Needs: admin.",
                "parameters": [{"name": "slot", "in": "path", "required": true, "schema": {"type": "string", "enum": ["A", "B"]}}],
                "responses": {
                    "200": { "description": "Chosen: {next_boot}" },
                    "404": { "description": "No such slot: {error, reason: no_such_slot}" },
                    "409": { "description": "The slot holds nothing bootable, or an install is running: {error, reason: not_bootable|busy}" }
                } } },
            "/api/v1/firmware/usb": { "get": op("Bundles on inserted USB media (the --usb-root directories, default /media, /run/media, /mnt,     3 levels deep): {roots, bundles: [{path, size, modified_ms, version, compatible, refused, reason}]}; each is checked like an upload     (refused: why it would not install). A short press of the reset button installs the one installable bundle", "viewer", ok("The bundles found")) },
            "/api/v1/firmware/usb/install": { "post": {
                "summary": "Install a bundle from USB media: {path} (one of GET /api/v1/firmware/usb's). It is copied to the data partition,     checked again and installed in the background like an upload",
                "description": "Needs: installer.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["path"], "additionalProperties": false,
                    "properties": { "path": { "type": "string" } } } } } },
                "responses": {
                    "202": { "description": "Installing: {version, compatible, path, progress}" },
                    "400": { "description": "path missing" },
                    "404": { "description": "No such bundle on the media (any more): {error, reason: not_found}" },
                    "409": { "description": "Another bundle is being received or installed: {error, reason: busy}" },
                    "422": { "description": "Refused like an upload: {error, reason}" },
                    "507": { "description": "The copy failed (data partition full, stick pulled): {error, reason: copy}" }
                } } },
            "/api/v1/system/factory-reset": { "post": {
                "summary": "Wipe the box's data and restart: {keep_config: bool}. keep_config=false also removes the configuration, certificate and \
    admin password (first-login credentials are generated again); the firmware slots and update history are always kept",
                "description": "Needs: admin.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["keep_config"], "additionalProperties": false,
                    "properties": { "keep_config": { "type": "boolean" } } } } } },
                "responses": {
                    "202": { "description": "Restarting: {keep_config, restarting: true}" },
                    "400": { "description": "keep_config missing or not a boolean, or an unknown field" },
                    "409": { "description": "An install is running" }
                } } }
    })
}

/// WHEP (RFC 9725) and viewer tokens, a separate `json!` like the firmware paths.
fn whep_paths() -> Value {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let session = json!({"name": "session", "in": "path", "required": true, "schema": {"type": "string"}});
    let auth =
        "a viewer token (Authorization: Bearer, any origin) or the session cookie of a viewer (same origin only)";
    json!({
        "/whep/{id}": {
            "parameters": [id.clone()],
            "post": {
                "summary": "WHEP: an SDP offer (recvonly H.264 video) in, the SDP answer out (ICE-lite, every candidate, no trickle)",
                "description": format!("Needs: {auth}."),
                "requestBody": { "required": true, "content": { "application/sdp": { "schema": { "type": "string" } } } },
                "responses": {
                    "201": { "description": "The answer (application/sdp); Location: /whep/{id}/{session}" },
                    "400": { "description": "The offer is not usable SDP" },
                    "401": { "description": "No or bad credentials (WWW-Authenticate: Bearer)" },
                    "403": { "description": "Role too low, or the cookie from a foreign Origin" },
                    "404": { "description": "No such camera" },
                    "415": { "description": "Not Content-Type: application/sdp" },
                    "422": { "description": "No video the box can send (H.264 packetization-mode=1, baseline)" },
                    "503": { "description": "Too many viewers, no free media port, or the camera cannot stream" }
                }
            },
            "options": { "summary": "CORS preflight for players on other origins", "responses": { "204": { "description": "CORS headers" } } }
        },
        "/whep/{id}/{session}": {
            "parameters": [id.clone(), session],
            "delete": {
                "summary": "End a viewer session",
                "description": format!("Needs: {auth}."),
                "responses": { "204": { "description": "Ended" }, "401": { "description": "No or bad credentials" },
                               "404": { "description": "No such session" } }
            },
            "patch": { "summary": "Trickle ICE / ICE restart: not supported", "responses": { "405": { "description": "Every candidate is in the answer" } } }
        },
        "/phone/ice-servers": {
            "post": {
                "summary": "The box's TURN for the /phone page: RTCIceServer entries with TURN REST credentials (12 h) minted for a SIP user",
                "description": "Needs the SIP user's own credentials in the body; wrong ones count towards the per-address login lockout. Empty when TURN is off or turn.auth_secret is not set.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["username", "password"],
                    "properties": { "username": { "type": "string" }, "password": { "type": "string" } } } } } },
                "responses": {
                    "200": { "description": "{iceServers: [{urls, username, credential}]} (Cache-Control: no-store)" },
                    "400": { "description": "Not the JSON object" },
                    "401": { "description": "Wrong SIP username or password" },
                    "429": { "description": "Locked out after failed logins" }
                }
            }
        },
        "/api/v1/cameras/{id}/viewer-token": {
            "parameters": [id],
            "post": with_body(
                op("A viewer token for WHEP players: {token, camera, expires_at, whep_url}; HMAC-signed, bound to the camera", "viewer",
                   json!({ "200": { "description": "{token, camera, expires_at, whep_url}" },
                           "404": { "description": "No such camera" },
                           "422": { "description": "ttl_seconds out of 1..=604800" } })),
                json!({ "type": "object", "properties": { "ttl_seconds": { "type": "integer", "minimum": 1, "maximum": 604800, "default": 3600 } } })),
        }
    })
}
