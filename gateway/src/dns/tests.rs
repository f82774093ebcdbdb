use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, Query};

use super::*;

fn table() -> DnsTable {
    let mut t = DnsTable::new("mesh.local").unwrap();
    t.insert(
        "default",
        "web",
        &[
            IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)),
            IpAddr::V6("fd00:200::1".parse::<Ipv6Addr>().unwrap()),
        ],
    )
    .unwrap();
    t.insert("shop", "cart", &[IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2))])
        .unwrap();
    t
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

fn ask(t: &DnsTable, name: &str, rtype: RecordType) -> Message {
    let req = query(name, rtype);
    let id = Message::from_vec(&req).unwrap().metadata.id;
    let resp = Message::from_vec(&answer(t, &req, Transport::Udp).expect("an answer")).unwrap();
    assert_eq!(resp.metadata.id, id);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    resp
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn a_and_aaaa_answer_with_the_portal_vips_case_insensitively() {
    let t = table();
    let r = ask(&t, "web.default.mesh.local.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(addrs(&r), ["10.200.0.1"]);
    assert_eq!(r.answers[0].ttl, TTL);
    let r = ask(&t, "WEB.Default.Mesh.Local", RecordType::AAAA);
    assert_eq!(addrs(&r), ["fd00:200::1"]);
    let r = ask(&t, "cart.shop.mesh.local", RecordType::A);
    assert_eq!(addrs(&r), ["10.200.0.2"]);
}

#[test]
fn negative_answers_carry_the_soa() {
    let t = table();
    // A portal without an IPv6 VIP: NODATA.
    let r = ask(&t, "cart.shop.mesh.local", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    // Inside the domain but unknown: NXDOMAIN.
    let r = ask(&t, "nope.default.mesh.local", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1);
    // The domain itself exists as a zone but has no A record of its own in the table.
    let r = ask(&t, "mesh.local", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Outside the domain: refused, not resolved.
    let r = ask(&t, "example.com", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
}

#[test]
fn garbage_and_responses_get_no_answer_and_do_not_panic() {
    let t = table();
    assert!(answer(&t, &[], Transport::Udp).is_none());
    assert!(answer(&t, &[0xff; 3], Transport::Udp).is_none());
    let mut resp = Message::from_vec(&query("web.default.mesh.local", RecordType::A)).unwrap();
    resp.metadata.message_type = MessageType::Response;
    assert!(answer(&t, &resp.to_vec().unwrap(), Transport::Udp).is_none());
    // Every prefix of a valid query, and every single-byte corruption of it.
    let q = query("web.default.mesh.local", RecordType::A);
    for n in 0..q.len() {
        let _ = answer(&t, &q[..n], Transport::Udp);
    }
    for i in 0..q.len() {
        let mut c = q.clone();
        c[i] ^= 0xa5;
        let _ = answer(&t, &c, Transport::Udp);
    }
    // Two questions in one message: FORMERR.
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("a.mesh.local").unwrap(),
        RecordType::A,
    ));
    m.add_query(Query::query(
        Name::from_ascii("b.mesh.local").unwrap(),
        RecordType::A,
    ));
    let r = Message::from_vec(&answer(&t, &m.to_vec().unwrap(), Transport::Udp).unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn a_udp_answer_too_big_for_the_client_is_truncated_and_tcp_gets_it_whole() {
    let mut t = DnsTable::new("mesh.local").unwrap();
    let many: Vec<IpAddr> = (1..=60u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 200, 1, i)))
        .collect();
    t.insert("default", "big", &many).unwrap();
    let q = query("big.default.mesh.local", RecordType::A);
    let udp = answer(&t, &q, Transport::Udp).unwrap();
    assert!(udp.len() <= 512, "{}", udp.len());
    let m = Message::from_vec(&udp).unwrap();
    assert!(m.metadata.truncation, "TC set");
    let tcp = Message::from_vec(&answer(&t, &q, Transport::Tcp).unwrap()).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
}

#[test]
fn invalid_domain_and_names_are_errors() {
    assert!(DnsTable::new("bad..domain").is_err());
    let mut t = DnsTable::new("mesh.local").unwrap();
    assert!(t.insert("default", &"x".repeat(70), &[]).is_err());
    assert!(t.is_empty());
}

#[tokio::test]
async fn serves_udp_and_tcp_and_swaps_tables_live() {
    let h = serve(&["127.0.0.1:0".parse().unwrap()], table())
        .await
        .unwrap();
    let addr = h.addrs[0];
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = query("web.default.mesh.local", RecordType::A);
    udp.send_to(&q, addr).await.unwrap();
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), udp.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        addrs(&Message::from_vec(&buf[..n]).unwrap()),
        ["10.200.0.1"]
    );

    let mut t2 = DnsTable::new("mesh.local").unwrap();
    t2.insert(
        "default",
        "web",
        &[IpAddr::V4(Ipv4Addr::new(10, 200, 0, 9))],
    )
    .unwrap();
    h.set(t2);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(&(q.len() as u16).to_be_bytes())
            .await
            .unwrap();
        tcp.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut msg).await.unwrap();
        assert_eq!(addrs(&Message::from_vec(&msg).unwrap()), ["10.200.0.9"]);
    }
}
