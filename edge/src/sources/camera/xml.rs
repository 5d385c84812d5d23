//! A small XML reader for SOAP: elements by local name (namespace prefixes dropped), attributes,
//! text. No DTDs and no entities beyond the five predefined and character references, so a hostile
//! document cannot expand; depth and element count are bounded.

/// An element: local name, attributes (local names), children and text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// Local name (`Envelope` for `s:Envelope`).
    pub name: String,
    /// Attributes as (local name, value); `xmlns` declarations are dropped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// Concatenated text content directly inside this element, trimmed.
    pub text: String,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("XML at byte {at}: {problem}")]
pub struct XmlError {
    /// Byte offset.
    pub at: usize,
    /// What is wrong.
    pub problem: &'static str,
}

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 48;
/// Most elements accepted in one document.
const MAX_ELEMENTS: usize = 20_000;

impl Element {
    /// The first direct child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The first element named `name` at any depth below this one (depth first).
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| if c.name == name { Some(c) } else { c.find(name) })
    }

    /// Every element named `name` below this one (not inside a match).
    pub fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        for c in &self.children {
            if c.name == name {
                out.push(c);
            } else {
                c.find_all(name, out);
            }
        }
    }

    /// An attribute's value by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

struct Reader<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, problem: &'static str) -> XmlError {
        XmlError { at: self.pos, problem }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn skip_until(&mut self, end: &str, problem: &'static str) -> Result<&'a str, XmlError> {
        let rest = self.rest();
        let i = rest.find(end).ok_or_else(|| self.err(problem))?;
        self.pos += i + end.len();
        Ok(&rest[..i])
    }
    fn skip_ws(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }
    fn name(&mut self) -> Result<&'a str, XmlError> {
        let rest = self.rest();
        let n = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '>' | '=' | '<' | '"' | '\''))
            .unwrap_or(rest.len());
        if n == 0 {
            return Err(self.err("expected a name"));
        }
        self.pos += n;
        Ok(&rest[..n])
    }
}

/// Replaces the predefined entities and character references.
fn unescape(raw: &str, at: usize) -> Result<String, XmlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find(';').filter(|&e| e <= 12).ok_or(XmlError { at, problem: "unterminated reference" })?;
        let ent = &tail[1..end];
        let c = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or(XmlError { at, problem: "unknown entity" })?
            }
        };
        out.push(c);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let s = std::str::from_utf8(bytes).map_err(|e| XmlError { at: e.valid_up_to(), problem: "not UTF-8" })?;
    let mut r = Reader { s: s.strip_prefix('\u{feff}').unwrap_or(s), pos: 0 };
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let rest = r.rest();
        if rest.is_empty() {
            break;
        }
        if let Some(after) = rest.strip_prefix('<') {
            if after.starts_with("?") {
                r.skip_until("?>", "unterminated processing instruction")?;
            } else if after.starts_with("!--") {
                r.skip_until("-->", "unterminated comment")?;
            } else if after.starts_with("![CDATA[") {
                r.pos += 9;
                let text = r.skip_until("]]>", "unterminated CDATA")?;
                let top = stack.last_mut().ok_or_else(|| r.err("text outside the root element"))?;
                top.text.push_str(text);
            } else if after.starts_with('!') {
                return Err(r.err("DTDs are not accepted"));
            } else if after.starts_with('/') {
                r.pos += 2;
                let name = r.name()?;
                r.skip_ws();
                if !r.rest().starts_with('>') {
                    return Err(r.err("expected '>'"));
                }
                r.pos += 1;
                let mut el = stack.pop().ok_or_else(|| r.err("end tag without a start tag"))?;
                if el.name != local(name) {
                    return Err(r.err("end tag does not match"));
                }
                el.text = el.text.trim().to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(r.err("more than one root element")),
                }
            } else {
                r.pos += 1;
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(r.err("too many elements"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(r.err("nested too deeply"));
                }
                if root.is_some() {
                    return Err(r.err("more than one root element"));
                }
                let name = r.name()?;
                let mut el = Element { name: local(name).to_owned(), ..Element::default() };
                loop {
                    r.skip_ws();
                    let rest = r.rest();
                    if rest.starts_with("/>") {
                        r.pos += 2;
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(el),
                            None => root = Some(el),
                        }
                        break;
                    }
                    if rest.starts_with('>') {
                        r.pos += 1;
                        stack.push(el);
                        break;
                    }
                    let an = r.name()?;
                    r.skip_ws();
                    if !r.rest().starts_with('=') {
                        return Err(r.err("expected '=' after an attribute name"));
                    }
                    r.pos += 1;
                    r.skip_ws();
                    let q = r.rest().chars().next().ok_or_else(|| r.err("unexpected end"))?;
                    if q != '"' && q != '\'' {
                        return Err(r.err("attribute value not quoted"));
                    }
                    r.pos += 1;
                    let at = r.pos;
                    let raw = r.skip_until(if q == '"' { "\"" } else { "'" }, "unterminated attribute value")?;
                    if raw.contains('<') {
                        return Err(XmlError { at, problem: "'<' in an attribute value" });
                    }
                    if an != "xmlns" && !an.starts_with("xmlns:") {
                        el.attrs.push((local(an).to_owned(), unescape(raw, at)?));
                    }
                }
            }
        } else {
            let at = r.pos;
            let n = rest.find('<').unwrap_or(rest.len());
            let raw = &rest[..n];
            r.pos += n;
            match stack.last_mut() {
                Some(top) => top.text.push_str(&unescape(raw, at)?),
                None if raw.trim().is_empty() => {}
                None => return Err(XmlError { at, problem: "text outside the root element" }),
            }
        }
    }
    if !stack.is_empty() {
        return Err(r.err("unclosed element"));
    }
    root.ok_or(XmlError { at: 0, problem: "no root element" })
}

/// Escapes text for an element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_soap_envelope() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="x">
  <s:Body><tt:Message UtcTime="2026-11-23T19:08:02Z"><tt:SimpleItem Name="Gas" Value="CH&#52; &amp; co"/></tt:Message>
  <x><![CDATA[<raw>]]></x></s:Body>
</s:Envelope>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Envelope");
        let item = root.find("SimpleItem").unwrap();
        assert_eq!(item.attr("Value"), Some("CH4 & co"));
        assert_eq!(root.find("Message").unwrap().attr("UtcTime"), Some("2026-11-23T19:08:02Z"));
        assert_eq!(root.find("x").unwrap().text, "<raw>");
    }

    #[test]
    fn refuses_hostile_documents() {
        for bad in [
            &b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"[..],
            b"<a><b></a>",
            b"<a>",
            b"<a/><b/>",
            b"text",
            b"<a x=1/>",
            b"<a>&unknown;</a>",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse(deep.as_bytes()).unwrap_err().problem, "nested too deeply");
    }

    #[test]
    fn escape_round_trips() {
        let s = "a<b>&\"c'";
        let doc = format!("<r v=\"{0}\">{0}</r>", escape(s));
        let root = parse(doc.as_bytes()).unwrap();
        assert_eq!(root.text, s);
        assert_eq!(root.attr("v"), Some(s));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn xml_like_text_never_panics(s in "[<>/a-z:=\"' &;#x0-9!\\[\\]?-]{0,200}") {
            let _ = parse(s.as_bytes());
        }
    }
}
