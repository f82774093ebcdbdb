//! The compact maps decode exactly as the `BTreeMap`s they replace did: the same values in the
//! same order, and the same errors (serde_json's messages, positions included).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::super::L4Protocol;
use super::*;

type Decoded = Vec<(IpAddr, Vec<(String, PortConfig)>)>;

/// What the `BTreeMap` decoder made of `json` (nil ports dropped), or its error.
fn as_maps(json: &str) -> Result<Decoded, String> {
    type Old = Option<BTreeMap<IpAddr, Option<BTreeMap<String, Option<PortConfig>>>>>;
    let old: Old = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(old
        .unwrap_or_default()
        .into_iter()
        .map(|(ip, ports)| {
            let ports = ports.unwrap_or_default().into_iter();
            (ip, ports.filter_map(|(n, p)| Some((n, p?))).collect())
        })
        .collect())
}

fn compact(json: &str) -> Result<Decoded, String> {
    let m: PortsByIp = serde_json::from_str(json).map_err(|e| e.to_string())?;
    assert_eq!(m.len(), m.iter().count());
    assert_eq!(m.is_empty(), m.keys().next().is_none());
    Ok(m.iter()
        .map(|(ip, ports)| {
            assert_eq!(ports.len(), ports.keys().count());
            (
                *ip,
                ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            )
        })
        .collect())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const TCP1: &str = r#"{"Protocol":"TCP","Port":1}"#;
const UDP2: &str = r#"{"Protocol":"UDP","Port":2}"#;

#[test]
fn ports_by_ip_decodes_as_the_maps_did() {
    let cases = [
        "null".to_string(),
        "{}".to_string(),
        // A nil port map is an IP without ports; a nil port is no port.
        format!(r#"{{"10.0.0.2":{{"http":{TCP1},"dns":null}},"10.0.0.1":null}}"#),
        // A repeated IP: the last value wins, a null one too.
        format!(r#"{{"10.0.0.1":{{"a":{TCP1}}},"10.0.0.1":{{"b":{UDP2}}}}}"#),
        format!(r#"{{"10.0.0.1":{{"a":{TCP1}}},"10.0.0.1":null}}"#),
        // The same IP spelled two ways is the same IP.
        format!(r#"{{"fd00::1":{{"a":{TCP1}}},"fd00:0::1":{{"b":{UDP2}}}}}"#),
        // A repeated name: the last wins; a later null removes the port; "" is a name.
        format!(r#"{{"10.0.0.1":{{"a":{TCP1},"a":{UDP2},"b":{TCP1},"b":null,"":{UDP2}}}}}"#),
        // Sorted by IP (IPv4 first, numerically) and by name.
        format!(
            r#"{{"fd00::1":{{"z":{TCP1},"a":{UDP2}}},"10.0.0.10":{{}},"10.0.0.9":{{"m":{TCP1}}}}}"#
        ),
        // Errors, wherever they are.
        r#"{"not-an-ip":{}}"#.to_string(),
        r#"{"fe80::1%eth0":{}}"#.to_string(),
        r#"{"":{}}"#.to_string(),
        format!(r#"{{"10.0.0.1":{{"a":{TCP1}}},"bad":{{}}}}"#),
        "[]".to_string(),
        "1".to_string(),
        r#""10.0.0.1""#.to_string(),
        r#"{"10.0.0.1":[]}"#.to_string(),
        r#"{"10.0.0.1":{"a":[]}}"#.to_string(),
        r#"{"10.0.0.1":{"a":{"Protocol":"TCP"}}}"#.to_string(),
        r#"{"10.0.0.1":{"a":{"Protocol":"TCP","Port":70000}}}"#.to_string(),
        r#"{"10.0.0.1":{"a":{"Protocol":6,"Port":1}}}"#.to_string(),
        r#"{"10.0.0.1":{"a":"#.to_string(),
    ];
    for json in &cases {
        assert_eq!(compact(json), as_maps(json), "{json}");
    }

    // And what that is, spelled out for a few.
    let tcp1 = PortConfig {
        protocol: L4Protocol::Tcp,
        port: 1,
    };
    let udp2 = PortConfig {
        protocol: L4Protocol::Udp,
        port: 2,
    };
    assert_eq!(compact(&cases[0]), Ok(vec![]));
    assert_eq!(
        compact(&cases[3]),
        Ok(vec![(ip("10.0.0.1"), vec![("b".into(), udp2)])])
    );
    assert_eq!(compact(&cases[4]), Ok(vec![(ip("10.0.0.1"), vec![])]));
    assert_eq!(
        compact(&cases[6]),
        Ok(vec![(
            ip("10.0.0.1"),
            vec![("".into(), udp2), ("a".into(), udp2)]
        )])
    );
    let m: PortsByIp = serde_json::from_str(&cases[7]).unwrap();
    assert_eq!(
        m.keys().copied().collect::<Vec<_>>(),
        [ip("10.0.0.9"), ip("10.0.0.10"), ip("fd00::1")]
    );
    let v6 = m.get(&ip("fd00::1")).unwrap();
    assert_eq!(v6.keys().collect::<Vec<_>>(), ["a", "z"]);
    assert_eq!(
        (v6.get("z"), v6.get("a"), v6.get("b")),
        (Some(&tcp1), Some(&udp2), None)
    );
    assert!(m.get(&ip("10.0.0.10")).unwrap().is_empty());
    assert_eq!(m.get(&ip("10.0.0.8")), None);
    assert_eq!(m.values().map(|p| p.len()).collect::<Vec<_>>(), [1, 0, 2]);
    // Names are stored end to end: multibyte ones, an IP whose ports follow another IP's, and
    // the same ports under another IP of another map are equal.
    let two = format!(
        r#"{{"10.0.0.2":{{"ü-x":{TCP1},"b":{UDP2}}},"10.0.0.1":{{"é":{TCP1},"":{UDP2}}}}}"#
    );
    assert_eq!(compact(&two), as_maps(&two));
    let m: PortsByIp = serde_json::from_str(&two).unwrap();
    let one: PortsByIp =
        serde_json::from_str(&format!(r#"{{"fd00::9":{{"b":{UDP2},"ü-x":{TCP1}}}}}"#)).unwrap();
    let second = m.get(&ip("10.0.0.2")).unwrap();
    assert_eq!(second.keys().collect::<Vec<_>>(), ["b", "ü-x"]);
    assert_eq!((second.get("ü-x"), second.get("é")), (Some(&tcp1), None));
    assert_eq!(m.get(&ip("10.0.0.1")).unwrap().get(""), Some(&udp2));
    assert_eq!(Some(second), one.get(&ip("fd00::9")));
    assert_ne!(m.get(&ip("10.0.0.1")), one.get(&ip("fd00::9")));
    let e = compact(&cases[8]).unwrap_err();
    assert!(e.contains("invalid IP address syntax"), "{e}");
    let e = compact(&cases[12]).unwrap_err();
    assert!(e.contains("expected a map"), "{e}");
}

/// Maps of strings, good and bad, in the forms Go writes and some it does not.
const STRING_MAPS: [&str; 11] = [
    "null",
    "{}",
    r#"{"b":"2","a":"1","":"","a":"3"}"#,
    r#"{"10.0.0.1":"web-0","app":"x\"y"}"#,
    r#"["a"]"#,
    r#"{"a":1}"#,
    r#"{"a":null}"#,
    r#"{"a":{}}"#,
    r#""a""#,
    r#"{"a":"1","#,
    r#"{"a":"1""#,
];

#[test]
fn labels_decode_as_the_map_did() {
    fn as_map(json: &str) -> Result<Vec<(String, String)>, String> {
        let old: Option<BTreeMap<String, String>> =
            serde_json::from_str(json).map_err(|e| e.to_string())?;
        Ok(old.unwrap_or_default().into_iter().collect())
    }
    fn compact(json: &str) -> Result<Vec<(String, String)>, String> {
        let l: Labels = serde_json::from_str(json).map_err(|e| e.to_string())?;
        assert_eq!(
            (l.len(), l.is_empty()),
            (l.iter().count(), l.iter().count() == 0)
        );
        Ok(l.iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
    for json in STRING_MAPS {
        assert_eq!(compact(json), as_map(json), "{json}");
    }
    let l: Labels = serde_json::from_str(r#"{"b":"2","a":"1","a":"3"}"#).unwrap();
    assert_eq!(
        (l.get("a"), l.get("b"), l.get("c")),
        (Some("3"), Some("2"), None)
    );
}

#[test]
fn unread_maps_are_checked_as_the_maps_were() {
    fn checked(json: &str) -> Result<(), String> {
        let mut d = serde_json::Deserializer::from_str(json);
        string_map_shape(&mut d)
            .and_then(|()| d.end())
            .map_err(|e| e.to_string())
    }
    fn as_map(json: &str) -> Result<(), String> {
        serde_json::from_str::<Option<BTreeMap<String, String>>>(json)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    for json in STRING_MAPS {
        assert_eq!(checked(json), as_map(json), "{json}");
    }
    assert!(checked(r#"{"a":"1"}"#).is_ok());
    assert!(checked(r#"["web-0"]"#).is_err());
}
