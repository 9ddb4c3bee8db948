//! The JSON Schema (draft 2020-12) of a `DevicePolicy` document, built from the tables the
//! validator itself uses (modes, levels, responses, actions, limits), so the two cannot
//! drift apart; `schemas/devicepolicy.schema.json` is this output, checked by a test.
//!
//! The schema says what a document may look like. What only the agent can judge (PCI address
//! forms, durations, a selector matching two policies) is left to `policy check`.

use iopf_common::policy::PASID_LIMIT;
use serde_json::{Value, json};

use super::{
    API_VERSION, KIND,
    action::{EXEC_ARGS_MAX, EXEC_RATE_MAX, NAMES},
    file::{LEVELS, MODES, NAME_MAX, RESPONSES, UNKNOWN_LEVEL, UNRECOVERABLE},
};

fn names<T>(t: &[(&str, T)]) -> Vec<String> {
    t.iter().map(|(n, _)| (*n).to_owned()).collect()
}

/// A list of distinct items of `item`, at least one.
fn set_of(item: Value) -> Value {
    json!({"type": "array", "items": item, "minItems": 1, "uniqueItems": true})
}

const DURATION: &str = "^[0-9]+(ns|us|ms|s)$";
/// A PASID or an inclusive range of them, decimal or 0x hex (20 bits: checked by the agent).
const PASID_RANGE: &str = "^([0-9]+|0[xX][0-9A-Fa-f]+)(-([0-9]+|0[xX][0-9A-Fa-f]+))?$";

pub fn device_policy() -> Value {
    // `levels` takes first and second only (`unknown` is its own key).
    let stages: Vec<String> = names(&LEVELS).into_iter().filter(|l| l != "unknown").collect();
    let exec = json!({
        "type": "object", "additionalProperties": false, "required": ["command"],
        "properties": {
            "command": {
                "type": "array", "minItems": 1, "maxItems": EXEC_ARGS_MAX,
                "prefixItems": [{"type": "string", "pattern": "^/"}],
                "items": {"type": ["string", "integer"]},
                "description": "argv: an absolute path, then its arguments (no shell)"
            },
            "timeout": {"type": "string", "pattern": DURATION, "default": "10s"},
            "maxPerMinute": {"type": "integer", "minimum": 1, "maximum": EXEC_RATE_MAX, "default": 10}
        }
    });
    let isolate = json!({
        "type": ["object", "null"], "additionalProperties": false,
        "properties": {"unbindDriver": {"type": "boolean", "default": false}}
    });
    let bare: Vec<&str> = NAMES.iter().copied().filter(|n| *n != "exec").collect();
    let action = json!({"oneOf": [
        {"enum": bare},
        {"type": "object", "additionalProperties": false, "minProperties": 1, "maxProperties": 1,
         "properties": {"exec": exec, "isolate": isolate, "log": {"type": "null"}, "alert": {"type": "null"}}}
    ]});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "iopf.dev/v1alpha1/DevicePolicy",
        "title": "iopf DevicePolicy",
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "metadata": {
                "type": "object", "additionalProperties": false, "required": ["name"],
                "properties": {"name": {"type": "string", "pattern": format!("^[A-Za-z0-9._-]{{1,{NAME_MAX}}}$")}}
            },
            "spec": {
                "type": "object", "additionalProperties": false, "required": ["mode", "selector", "expect"],
                "properties": {
                    "mode": {"enum": names(&MODES)},
                    "selector": {
                        "type": "object", "additionalProperties": false, "minProperties": 1,
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
                            "pci": {"type": "string", "pattern": "^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-1][0-9A-Fa-f]\\.[0-7]$"},
                            "vendorDevice": {"type": "string", "pattern": "^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$"},
                            "driver": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
                            "iommuGroup": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                            "pasids": {
                                "type": "array", "minItems": 1,
                                "items": {"oneOf": [
                                    {"type": "integer", "minimum": 0, "maximum": PASID_LIMIT - 1},
                                    {"type": "string", "pattern": PASID_RANGE}
                                ]},
                                "description": "only faults with a PASID in these (N or LOW-HIGH, inclusive); absent: every fault of the device"
                            }
                        }
                    },
                    "expect": {
                        "type": "object", "additionalProperties": false, "minProperties": 1,
                        "properties": {
                            "levels": set_of(json!({"enum": stages})),
                            "unknownLevel": {"enum": names(&UNKNOWN_LEVEL), "default": "allowed"},
                            "responses": set_of(json!({"enum": names(&RESPONSES)})),
                            "maxServiceLatency": {"type": "string", "pattern": DURATION},
                            "maxFaultRate": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
                            "unrecoverable": {"enum": names(&UNRECOVERABLE), "default": "allowed"}
                        }
                    },
                    "actions": {"type": "array", "minItems": 1, "items": action, "default": ["log"]}
                }
            }
        }
    })
}
