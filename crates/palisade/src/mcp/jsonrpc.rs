//! JSON-RPC 2.0 as MCP uses it: classifying one incoming line as a request, a notification or
//! a response, and building responses and errors.

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::{json, Map, Value};

/// Error codes of JSON-RPC 2.0.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), data: None }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }

    fn to_json(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// One incoming message.
#[derive(Debug, PartialEq)]
pub enum Message {
    Request { id: Value, method: String, params: Option<Value> },
    Notification { method: String, params: Option<Value> },
    /// A response from the client. This server sends no requests, so it ignores them.
    Response,
}

/// An incoming line that is no valid message, with the id for the error response (`null` when
/// the request's id could not be read).
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub id: Value,
    pub error: RpcError,
}

/// Parses one line into a [`Message`].
pub fn parse(line: &[u8]) -> Result<Message, Rejected> {
    let value: Value = serde_json::from_slice(line).map_err(|error| Rejected {
        id: Value::Null,
        error: RpcError::new(PARSE_ERROR, format!("Parse error: {error}")),
    })?;
    let invalid = |id: &Value, message: &str| Rejected { id: id.clone(), error: RpcError::new(INVALID_REQUEST, message) };
    let mut object = match value {
        Value::Object(object) => object,
        // Batches were removed from MCP in protocol version 2025-06-18.
        Value::Array(_) => return Err(invalid(&Value::Null, "Invalid Request: JSON-RPC batches are not supported; send one message per line")),
        _ => return Err(invalid(&Value::Null, "Invalid Request: a message must be a JSON object")),
    };
    let id = object.remove("id");
    if let Some(id) = &id {
        if !is_valid_id(id) {
            return Err(invalid(&Value::Null, "Invalid Request: the id must be a string or an integer"));
        }
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(&reply_id, "Invalid Request: \"jsonrpc\" must be \"2.0\""));
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => return Err(invalid(&reply_id, "Invalid Request: \"method\" must be a string")),
        None if id.is_some() && (object.contains_key("result") || object.contains_key("error")) => return Ok(Message::Response),
        None => return Err(invalid(&reply_id, "Invalid Request: \"method\" is missing")),
    };
    let params = object.remove("params");
    if params.as_ref().is_some_and(|params| !params.is_object() && !params.is_array()) {
        return Err(invalid(&reply_id, "Invalid Request: \"params\" must be an object"));
    }
    Ok(match id {
        Some(id) => Message::Request { id, method, params },
        None => Message::Notification { method, params },
    })
}

/// MCP request ids are strings or integers; JSON-RPC's `null` is not allowed.
fn is_valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(number) => number.is_i64() || number.is_u64(),
        _ => false,
    }
}

/// Reads the `"id"` of a message from the first bytes of a line that was too long to keep
/// whole. This finds it when it comes before the large value, as most clients write it.
pub fn id_from_prefix(prefix: &[u8]) -> Value {
    struct IdVisitor<'a>(&'a mut Option<Value>);

    impl<'de> Visitor<'de> for IdVisitor<'_> {
        type Value = ();

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a JSON-RPC message")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "id" {
                    *self.0 = Some(map.next_value()?);
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut id = None;
    // The prefix ends in the middle of the message, so the parse always fails at its end.
    // Only the id seen before that matters.
    let _ = serde_json::Deserializer::from_slice(prefix).deserialize_map(IdVisitor(&mut id));
    id.filter(is_valid_id).unwrap_or(Value::Null)
}

/// Builds a successful response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// Builds an error response.
pub fn error(id: &Value, error: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": error.to_json() })
}

/// Returns the `params` of a request as an object. Absent params are an empty object.
pub fn params_object(params: Option<Value>) -> Result<Map<String, Value>, RpcError> {
    match params {
        None => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object),
        Some(_) => Err(RpcError::invalid_params("Invalid params: \"params\" must be an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(line: &str) -> Rejected {
        parse(line.as_bytes()).expect_err("the line should be rejected")
    }

    #[test]
    fn parse_classifies_messages() {
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ok(Message::Request { id: json!(1), method: "ping".into(), params: None })
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":{}}"#),
            Ok(Message::Notification { method: "notifications/initialized".into(), params: Some(json!({})) })
        );
        assert_eq!(parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#), Ok(Message::Response));
    }

    #[test]
    fn parse_rejects_invalid_messages() {
        assert_eq!(rejected("{not json").error.code, PARSE_ERROR);
        assert_eq!(rejected("{not json").id, Value::Null);
        for line in [r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, "42", r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#] {
            let rejected = rejected(line);
            assert_eq!(rejected.error.code, INVALID_REQUEST, "{line}");
            assert_eq!(rejected.id, Value::Null, "{line}");
        }
        for line in [r#"{"id":7,"method":"ping"}"#, r#"{"jsonrpc":"2.0","id":7,"method":3}"#, r#"{"jsonrpc":"2.0","id":7}"#, r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":"x"}"#] {
            let rejected = rejected(line);
            assert_eq!(rejected.error.code, INVALID_REQUEST, "{line}");
            assert_eq!(rejected.id, json!(7), "the error keeps the id: {line}");
        }
    }

    #[test]
    fn id_from_prefix_reads_leading_id() {
        assert_eq!(id_from_prefix(br#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"arguments":{"stdin":"xxxx"#), json!(12));
        assert_eq!(id_from_prefix(br#"{"method":"tools/call","params":{"a":[1,2]},"id":"r-1","params2":"xx"#), json!("r-1"));
        assert_eq!(id_from_prefix(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"stdin":"xxxx"#), Value::Null);
        assert_eq!(id_from_prefix(br#"[1,2,3"#), Value::Null);
        assert_eq!(id_from_prefix(br#"{"id":{"x":1},"method":"#), Value::Null);
    }
}
