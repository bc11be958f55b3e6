//! Who a domain is to OpenStack: Nova writes an `instance` element in namespace [`NOVA_NS`]
//! into every domain it defines (instance name, flavor, owning user and project). The sampler
//! reads it with `virDomainGetMetadata`, as it reads the app targets' element, and this module
//! turns it into [`DomainIdentity`] (`vm_migration_domain_info`, and the migration records).
//!
//! ```xml
//! <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
//!   <nova:name>web-1</nova:name>
//!   <nova:flavor name="m1.small">…</nova:flavor>
//!   <nova:owner>
//!     <nova:user uuid="6d3…">alice</nova:user>
//!     <nova:project uuid="a1b…">shop</nova:project>
//!   </nova:owner>
//! </nova:instance>
//! ```
//! `virDomainGetMetadata` returns it without the namespace (`<instance><name>web-1</name>…`):
//! both forms are read. Elements Nova adds over time (package, ports, root, creationTime) are ignored; a missing one
//! leaves its field empty. The element comes from whoever may define domains: it is parsed
//! without DTDs (roxmltree refuses them, so no entity expansion) and each value is cut to
//! [`MAX_VALUE`] bytes, as label values must stay small.

pub use crate::record::DomainIdentity;

/// Nova's libvirt metadata namespace (Nova writes 1.1).
pub const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";
/// Longest value kept, in bytes (cut at a character boundary).
pub const MAX_VALUE: usize = 256;

/// Parse the `instance` element `virDomainGetMetadata` returned; the error is one line.
pub fn parse_nova(xml: &str) -> Result<DomainIdentity, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "instance" || !in_nova(root) {
        return Err(format!(
            "the element is <{}> in namespace {:?}; expected <instance> in {NOVA_NS}",
            root.tag_name().name(),
            root.tag_name().namespace().unwrap_or("")
        ));
    }
    let owner = child(root, "owner");
    let user = owner.and_then(|o| child(o, "user"));
    let project = owner.and_then(|o| child(o, "project"));
    Ok(DomainIdentity {
        name: text(child(root, "name")),
        project_id: attr(project, "uuid"),
        project_name: text(project),
        user_id: attr(user, "uuid"),
        user_name: text(user),
        flavor: attr(child(root, "flavor"), "name"),
    })
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

/// The first child element `name` in Nova's namespace.
fn child<'a, 'i>(parent: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    parent
        .children()
        .find(|n| n.is_element() && n.tag_name().name() == name && in_nova(*n))
}

/// `virDomainGetMetadata` hands the element back without its namespace (the one asked for is
/// implied); the element as Nova wrote it has Nova's. Any other namespace is not Nova's.
fn in_nova(n: Node<'_, '_>) -> bool {
    matches!(n.tag_name().namespace(), None | Some(NOVA_NS))
}

/// All text inside (a comment or CDATA split does not cut a name short), trimmed and bounded.
fn text(n: Option<Node<'_, '_>>) -> String {
    n.map(|n| {
        n.descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect::<String>()
    })
    .map(|t| bounded(t.trim()))
    .unwrap_or_default()
}

fn attr(n: Option<Node<'_, '_>>, a: &str) -> String {
    n.and_then(|n| n.attribute(a))
        .map(|v| bounded(v.trim()))
        .unwrap_or_default()
}

/// `s` cut to at most [`MAX_VALUE`] bytes at a character boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Nova (2024.1) writes, as `virsh metadata --uri … ` prints it back.
    const NOVA: &str = r#"<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:package version="29.0.1"/>
  <nova:name>web-1</nova:name>
  <nova:creationTime>2026-11-27 10:00:00</nova:creationTime>
  <nova:flavor name="m1.small">
    <nova:memory>2048</nova:memory>
    <nova:disk>20</nova:disk>
    <nova:swap>0</nova:swap>
    <nova:ephemeral>0</nova:ephemeral>
    <nova:vcpus>1</nova:vcpus>
  </nova:flavor>
  <nova:owner>
    <nova:user uuid="6d3c2b1a00000000000000000000000a">alice</nova:user>
    <nova:project uuid="a1b2c3d400000000000000000000000b">shop</nova:project>
  </nova:owner>
  <nova:root type="image" uuid="0e0e0e0e-0000-4000-8000-00000000000c"/>
  <nova:ports>
    <nova:port uuid="p1"><nova:ip type="fixed" address="10.0.0.5" ipVersion="4"/></nova:port>
  </nova:ports>
</nova:instance>"#;

    #[test]
    fn nova_element_gives_every_field() {
        assert_eq!(
            parse_nova(NOVA).expect("valid"),
            DomainIdentity {
                name: "web-1".into(),
                project_id: "a1b2c3d400000000000000000000000b".into(),
                project_name: "shop".into(),
                user_id: "6d3c2b1a00000000000000000000000a".into(),
                user_name: "alice".into(),
                flavor: "m1.small".into(),
            }
        );
        // virDomainGetMetadata hands it back without the namespace (libvirt 9.0, checked
        // with `virsh metadata --uri`); with a default namespace it is the same.
        let bare = NOVA.replace("nova:", "").replace(
            r#" xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1""#,
            "",
        );
        assert!(!bare.contains("xmlns"), "{bare}");
        assert_eq!(parse_nova(&bare), parse_nova(NOVA));
        let default_ns = NOVA.replace("nova:", "").replace("xmlns:nova", "xmlns");
        assert_eq!(parse_nova(&default_ns), parse_nova(NOVA));
    }

    #[test]
    fn missing_parts_are_empty() {
        let id = parse_nova(&format!(
            "<instance xmlns='{NOVA_NS}'><name>only-name</name><owner><user>bob</user></owner></instance>"
        ))
        .expect("valid");
        assert_eq!(
            id,
            DomainIdentity {
                name: "only-name".into(),
                user_name: "bob".into(),
                ..Default::default()
            }
        );
        let empty = parse_nova(&format!("<instance xmlns='{NOVA_NS}'/>")).expect("valid");
        assert_eq!(empty, DomainIdentity::default());
        assert_eq!(parse_nova("<instance/>"), Ok(DomainIdentity::default()));
    }

    #[test]
    fn elements_of_other_namespaces_are_not_read() {
        // A `name` that is not Nova's must not become the instance name.
        let id = parse_nova(&format!(
            "<instance xmlns='{NOVA_NS}' xmlns:x='urn:x'><x:name>spoof</x:name><name>real</name></instance>"
        ))
        .expect("valid");
        assert_eq!(id.name, "real");
    }

    #[test]
    fn hostile_and_malformed_elements_are_one_line_errors() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><instance xmlns="http://openstack.org/xmlns/libvirt/nova/1.1"><name>&lol2;</name></instance>"#;
        let external = r#"<!DOCTYPE i [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><instance xmlns="http://openstack.org/xmlns/libvirt/nova/1.1"><name>&xxe;</name></instance>"#;
        for (xml, says) in [
            ("", "not XML"),
            ("<instance", "not XML"),
            (
                "<nova:instance><nova:name>x</nova:name></nova:instance>",
                "not XML",
            ),
            (bomb, "not XML"),
            (external, "not XML"),
            (
                "<instance xmlns='http://openstack.org/xmlns/libvirt/nova/1.0'/>",
                "expected <instance>",
            ),
            (
                "<targets xmlns='http://openstack.org/xmlns/libvirt/nova/1.1'/>",
                "expected <instance>",
            ),
            ("<domain/>", "expected <instance>"),
        ] {
            let e = parse_nova(xml).expect_err(xml);
            assert!(e.contains(says), "{xml}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(400); // 800 bytes
        let id = parse_nova(&format!(
            "<instance xmlns='{NOVA_NS}'><name>{long}</name><flavor name='{long}'/></instance>"
        ))
        .expect("valid");
        assert_eq!(id.name.len(), MAX_VALUE);
        assert!(id.name.chars().all(|c| c == 'é'));
        assert_eq!(id.flavor, id.name);
    }

    #[test]
    fn text_split_by_comments_and_cdata_is_whole() {
        let id = parse_nova(&format!(
            "<instance xmlns='{NOVA_NS}'><name>we<!-- c -->b-<![CDATA[1]]></name></instance>"
        ))
        .expect("valid");
        assert_eq!(id.name, "web-1");
    }
}
