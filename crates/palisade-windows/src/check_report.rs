//! The report of `palisade check` on Windows: each enforcement layer, whether this machine has
//! it, why not, and how to enable it. `sys::check` probes the layers; this module holds the
//! report and its text and JSON forms, so both are tested on every platform.

use std::fmt;

/// One layer's availability on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// A stable identifier, such as `job_objects` or `wfp`.
    pub name: &'static str,
    pub available: bool,
    /// Whether the default policy needs this layer to be enforced.
    pub required: bool,
    /// The feature that is available, or the reason it is not.
    pub detail: String,
    /// How to make the layer available; empty when it is.
    pub fix: String,
}

impl Layer {
    pub fn new(name: &'static str, required: bool, result: Result<String, (String, String)>) -> Layer {
        match result {
            Ok(detail) => Layer { name, available: true, required, detail, fix: String::new() },
            Err((detail, fix)) => Layer { name, available: false, required, detail, fix },
        }
    }
}

/// The layers this machine enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub layers: Vec<Layer>,
    /// Wine's version when the process runs under Wine, which accepts most of the calls and
    /// enforces few of them.
    pub wine: Option<String>,
}

impl CheckReport {
    /// Checks whether the default policy is enforced: every required layer available, and not
    /// under Wine.
    pub fn fully_enforced(&self) -> bool {
        self.wine.is_none() && self.layers.iter().all(|layer| layer.available || !layer.required)
    }

    /// Formats the report as a JSON object: `{"platform", "wine", "layers": {name: {available,
    /// required, detail, fix}}, "default_policy_enforced"}`, with the layer fields as in
    /// `palisade check --json` on Linux.
    pub fn to_json(&self) -> String {
        let mut json = String::from("{\n  \"platform\": \"windows\",\n  \"wine\": ");
        match &self.wine {
            Some(version) => json.push_str(&json_string(version)),
            None => json.push_str("null"),
        }
        json.push_str(",\n  \"layers\": {");
        for (index, layer) in self.layers.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            let fix = if layer.fix.is_empty() { "null".to_owned() } else { json_string(&layer.fix) };
            json.push_str(&format!(
                "{separator}\n    {}: {{\"available\": {}, \"required\": {}, \"detail\": {}, \"fix\": {fix}}}",
                json_string(layer.name),
                layer.available,
                layer.required,
                json_string(&layer.detail),
            ));
        }
        json.push_str(&format!("\n  }},\n  \"default_policy_enforced\": {}\n}}", self.fully_enforced()));
        json
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(version) = &self.wine {
            writeln!(f, "Running under Wine {version}: Wine accepts most of these calls but enforces few of them,")?;
            writeln!(f, "so nothing below protects anything. Use a real Windows machine for enforcement.\n")?;
        }
        for layer in &self.layers {
            let state = if layer.available { "yes" } else if layer.required { "NO" } else { "no" };
            writeln!(f, "{:<16} {state:<4} {}", layer.name, layer.detail)?;
            if !layer.fix.is_empty() {
                writeln!(f, "{:<21} fix: {}", "", layer.fix)?;
            }
        }
        writeln!(f, "\nNO marks a missing layer the default policy requires.")?;
        if self.fully_enforced() {
            writeln!(f, "The default policy is fully enforced on this machine.")
        } else if self.wine.is_some() {
            writeln!(f, "The default policy is not enforced: this is Wine, not Windows.")
        } else {
            writeln!(f, "The default policy cannot be fully enforced here: palisade run refuses until the layers marked NO are fixed.")
        }
    }
}

/// Quotes `text` as a JSON string literal, with the escapes RFC 8259 requires.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CheckReport {
        CheckReport {
            layers: vec![
                Layer::new("job_objects", true, Ok("kill on close, limits".into())),
                Layer::new("wfp", true, Err(("FwpmEngineOpen0 failed: 0x6E4".into(), "run `palisade setup` from an elevated prompt".into()))),
                Layer::new("appcontainer", false, Err(("missing".into(), "not used by palisade".into()))),
            ],
            wine: None,
        }
    }

    #[test]
    fn fully_enforced_needs_required_layers_and_real_windows() {
        let mut report = report();
        assert!(!report.fully_enforced());
        report.layers[1].available = true;
        assert!(report.fully_enforced(), "optional layers do not count");
        report.wine = Some("8.0".into());
        assert!(!report.fully_enforced(), "Wine never enforces");
    }

    #[test]
    fn text_marks_missing_required_layers() {
        let text = report().to_string();
        assert!(text.contains("wfp              NO   FwpmEngineOpen0 failed"), "{text}");
        assert!(text.contains("appcontainer     no   missing"), "{text}");
        assert!(text.contains("fix: run `palisade setup` from an elevated prompt"));
        assert!(text.contains("cannot be fully enforced"));
        let wine = CheckReport { wine: Some("8.0".into()), ..report() }.to_string();
        assert!(wine.starts_with("Running under Wine 8.0"), "{wine}");
    }

    #[test]
    fn json_has_every_layer_and_escapes_text() {
        let mut report = report();
        report.layers[0].detail = "a \"quoted\" C:\\path\nand\u{1}".into();
        report.wine = Some("8.0".into());
        let json = report.to_json();
        assert!(json.contains(r#""detail": "a \"quoted\" C:\\path\nand\u0001""#), "{json}");
        assert!(json.contains(r#""wine": "8.0""#));
        assert!(json.contains(r#""job_objects": {"available": true, "required": true"#), "{json}");
        assert!(json.contains(r#""fix": null"#));
        assert!(json.contains(r#""default_policy_enforced": false"#));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["layers"]["job_objects"]["detail"], "a \"quoted\" C:\\path\nand\u{1}");
        assert_eq!(parsed["layers"].as_object().unwrap().len(), 3);
    }
}
