//! Alarm receivers and trusted contacts through the real server: frames written on a
//! pseudo-terminal the server reads as its receiver, ACK/NAK read back, cases gating contacts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;

use crate::support::{Instance, Setup, any_file_contains};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pty pair: the master end the test writes frames to, the slave end (kept open) whose path
/// the server opens as its receiver device.
fn pty() -> (SerialStream, SerialStream, String) {
    let (master, slave) = SerialStream::pair().unwrap();
    let path = tokio_serial::SerialPort::name(&slave).unwrap();
    (master, slave, path)
}

fn receiver_config(path: &str, max_open: &str) -> String {
    format!(
        "[alarms]\nmax_open = \"{max_open}\"\n[[alarms.receiver]]\nname = \"mlr2-a\"\ndevice = \"{path}\"\nline_digits = 1\nheartbeat_timeout = \"90s\"\n"
    )
}

/// Polls `check` every 100 ms for up to 30 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_connected(instance: &Instance) {
    let operator = instance.client("operator");
    eventually("the receiver to connect", async || {
        let status = operator.get("/v1/status").await.ok()?.json();
        (status["receivers"][0]["connected"] == true).then_some(())
    })
    .await;
}

/// Writes one frame and returns the single answer byte.
async fn exchange(master: &mut SerialStream, frame: &[u8]) -> u8 {
    AsyncWriteExt::write_all(master, frame).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(
        Duration::from_secs(10),
        AsyncReadExt::read_exact(master, &mut answer),
    )
    .await
    .expect("an answer byte")
    .unwrap();
    answer[0]
}

#[test]
fn contacts_are_readable_only_while_an_alarm_case_is_open() {
    let runtime = runtime();
    let _context = runtime.enter();
    let (mut master, _slave, path) = pty();
    let instance = Setup::new(&receiver_config(&path, "24h")).start();
    runtime.block_on(async {
        wait_connected(&instance).await;
        let contracts = instance.client("contracts");
        let operator = instance.client("operator");
        let list = serde_json::json!([
            {"name": "Jeanne Martin-Zyx", "phone": "06 98 76 54 32", "relation": "fille", "order": 2},
            {"name": "Paul Durand-Qwv", "phone": "+33 1 23 45 67 89", "relation": "voisin", "order": 1},
        ]);
        let response = contracts.send(hyper::Method::PUT, "/v1/accounts/1234/contacts", &[("content-type", "application/json")], bytes::Bytes::from(list.to_string())).await.unwrap();
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));

        // No case yet: nothing to read.
        assert!(operator.get("/v1/alarms").await.unwrap().json()["items"].as_array().unwrap().is_empty());
        assert_eq!(operator.get("/v1/alarms/case_unknown/contacts").await.unwrap().status, 404);

        // A heartbeat, an event that opens no case, a corrupt frame: ACK, ACK, NAK.
        assert_eq!(exchange(&mut master, b"1011           @    \x14").await, 0x06);
        assert_eq!(exchange(&mut master, b"5011 181234E60200000\x14").await, 0x06);
        assert!(operator.get("/v1/alarms").await.unwrap().json()["items"].as_array().unwrap().is_empty());
        assert_eq!(exchange(&mut master, b"5011 191234E13001015\x14").await, 0x15);

        // Duress on account 1234 (test frame 3): ACK, a case opens.
        assert_eq!(exchange(&mut master, b"5011 181234E12101001\x14").await, 0x06);
        let case = eventually("the case to open", async || {
            let items = operator.get("/v1/alarms?state=open").await.ok()?.json()["items"].clone();
            items.get(0).cloned()
        })
        .await;
        assert_eq!(case["account"], "1234");
        assert_eq!(case["events"][0]["event"], "E121");
        let case_id = case["id"].as_str().unwrap().to_owned();

        // Burglary joins the same case.
        assert_eq!(exchange(&mut master, b"5011 181234E13001015\x14").await, 0x06);
        eventually("the event to join", async || {
            let items = operator.get("/v1/alarms").await.ok()?.json()["items"].clone();
            (items[0]["events"].as_array()?.len() == 2 && items.as_array()?.len() == 1).then_some(())
        })
        .await;

        // Contacts, in call order, for operators only; audited with the case.
        let response = operator.get(&format!("/v1/alarms/{case_id}/contacts")).await.unwrap();
        assert_eq!(response.status, 200);
        let contacts = response.json()["items"].clone();
        assert_eq!(contacts[0]["name"], "Paul Durand-Qwv");
        assert_eq!(contacts[1]["phone"], "+33698765432");
        assert_eq!(instance.client("supervisor").get(&format!("/v1/alarms/{case_id}/contacts")).await.unwrap().status, 403);
        let audit = instance.client("dpo").get("/v1/audit?action=contacts.read").await.unwrap().json();
        let items = audit["items"].as_array().unwrap();
        assert_eq!((items[0]["object"].as_str(), items[0]["outcome"].as_str()), (Some("case_unknown"), Some("denied")));
        assert_eq!((items[1]["object"].as_str(), items[1]["outcome"].as_str()), (Some(case_id.as_str()), Some("allowed")));

        // Shortened list: the removed contact leaves no trace in the data directory.
        let shorter = serde_json::json!([{"name": "Paul Durand-Qwv", "phone": "+33 1 23 45 67 89", "relation": "voisin", "order": 1}]);
        contracts.send(hyper::Method::PUT, "/v1/accounts/1234/contacts", &[("content-type", "application/json")], bytes::Bytes::from(shorter.to_string())).await.unwrap();
        let contacts = operator.get(&format!("/v1/alarms/{case_id}/contacts")).await.unwrap().json()["items"].clone();
        assert_eq!(contacts.as_array().unwrap().len(), 1);
        for needle in ["Jeanne", "Martin-Zyx", "0698765432", "+33698765432", "33698765432", "Paul Durand"] {
            assert_eq!(any_file_contains(&instance.setup.data, needle.as_bytes()), None, "{needle}");
        }

        // Closed by the operator: contacts refused.
        let response = operator.post_json(&format!("/v1/alarms/{case_id}/close"), &serde_json::json!({"outcome": "false alarm, client reached"})).await.unwrap();
        assert_eq!(response.status, 200);
        let response = operator.get(&format!("/v1/alarms/{case_id}/contacts")).await.unwrap();
        assert_eq!((response.status, response.code().as_str()), (403, "no_open_alarm"));

        // All designations ended.
        let response = contracts.send(hyper::Method::DELETE, "/v1/accounts/1234/contacts", &[], bytes::Bytes::new()).await.unwrap();
        assert_eq!(response.json()["deleted"], 1);
        // The same frame again within the duplicate window (a lost ACK) is acknowledged but is
        // not a new event; another burglary zone is.
        assert_eq!(exchange(&mut master, b"5011 181234E13001015\x14").await, 0x06);
        assert_eq!(exchange(&mut master, b"5011 181234E13001016\x14").await, 0x06);
        let case = eventually("a new case", async || {
            operator.get("/v1/alarms").await.ok()?.json()["items"].get(0).cloned()
        })
        .await;
        let response = operator.get(&format!("/v1/alarms/{}/contacts", case["id"].as_str().unwrap())).await.unwrap();
        assert_eq!(response.json()["items"], serde_json::json!([]));

        // The DC-05/DC-09 form of a Contact ID event ("1" = new event) opens cases too, and the
        // audit names the alarm source that posted it.
        let source = instance.client("alarm_source");
        let mut opened = vec![case["id"].as_str().unwrap().to_owned()];

        // A SIA block with two events (and a text field): one ACK, both on the case, with
        // the area and the receiver line.
        assert_eq!(exchange(&mut master, b"S011[#BEEF|Nri1BA01/BA02^Salon^]\x14").await, 0x06);
        let beef = eventually("the SIA case", async || {
            let items = operator.get("/v1/alarms").await.ok()?.json()["items"].clone();
            let case = items.as_array()?.iter().find(|c| c["account"] == "BEEF")?.clone();
            (case["events"].as_array()?.len() == 2).then_some(case)
        })
        .await;
        let events: Vec<(String, String, String, String)> = beef["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let field = |name: &str| e[name].as_str().unwrap_or("-").to_owned();
                (field("event"), field("zone"), field("group"), field("line"))
            })
            .collect();
        let expected = |zone: &str| ("BA".to_owned(), zone.to_owned(), "1".to_owned(), "01/1".to_owned());
        assert_eq!(events, [expected("01"), expected("02")], "{beef}");
        opened.push(beef["id"].as_str().unwrap().to_owned());
        for account in ["C0DE", "C0DF", "C0E0"] {
            let response = source
                .post_json(
                    "/v1/alarms",
                    &serde_json::json!({"account": account, "event": "1130", "zone": "015"}),
                )
                .await
                .unwrap();
            assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
            opened.push(response.json()["case"].as_str().unwrap().to_owned());
        }
        let audit = instance.client("dpo").get("/v1/audit?action=alarm.open").await.unwrap().json();
        let entry = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["object"] == opened[2].as_str())
            .cloned()
            .unwrap();
        assert_eq!((entry["actor"].as_str(), entry["role"].as_str()), (Some("alarm_source"), Some("alarm_source")), "{entry}");

        // Listings page like every list: open ones oldest first, closed ones newest first.
        let mut seen = Vec::new();
        let mut path = "/v1/alarms?state=open&limit=2".to_owned();
        loop {
            let page = operator.get(&path).await.unwrap().json();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 2, "{page}");
            for item in items {
                assert_eq!(item["state"], "open");
                seen.push(item["id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/alarms?state=open&limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, opened);
        let closed = operator.get("/v1/alarms?state=closed").await.unwrap().json();
        let closed = closed["items"].as_array().unwrap();
        assert_eq!((closed.len(), closed[0]["id"].as_str(), closed[0]["state"].as_str()), (1, Some(case_id.as_str()), Some("closed")));
        assert_eq!(closed[0]["outcome"], "false alarm, client reached");
        let all = operator.get("/v1/alarms?state=all&limit=10").await.unwrap().json();
        assert_eq!(all["items"].as_array().unwrap().len(), 6, "{all}");
        for bad in ["state=pending", "limit=0", "cursor=zzz"] {
            let response = operator.get(&format!("/v1/alarms?{bad}")).await.unwrap();
            assert_eq!(response.status, 400, "{bad}");
        }
    });
    let (code, out, err) = instance.setup.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_case_closes_itself_after_max_open_and_a_missing_device_is_survived() {
    let instance = Setup::new(&receiver_config("/dev/callguard-test-absent", "2s")).start();
    runtime().block_on(async {
        let source = instance.client("alarm_source");
        let contracts = instance.client("contracts");
        let operator = instance.client("operator");
        contracts
            .send(
                hyper::Method::PUT,
                "/v1/accounts/BEEF/contacts",
                &[("content-type", "application/json")],
                bytes::Bytes::from(
                    r#"[{"name": "N", "phone": "0612345678", "relation": "ami", "order": 1}]"#,
                ),
            )
            .await
            .unwrap();
        let response = source
            .post_json(
                "/v1/alarms",
                &serde_json::json!({"account": "BEEF", "event": "E110", "zone": "003"}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.json()["action"], "opened");
        let case_id = response.json()["case"].as_str().unwrap().to_owned();
        let response = source
            .post_json(
                "/v1/alarms",
                &serde_json::json!({"account": "beef", "event": "R110"}),
            )
            .await
            .unwrap();
        // The same account however it is written: it joins the case `BEEF` opened.
        assert_eq!(response.json()["action"], "joined");
        let bad = source
            .post_json(
                "/v1/alarms",
                &serde_json::json!({"account": "BEEF", "event": "X999"}),
            )
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        // The case closes itself once max_open (2 s here) has passed.
        eventually("the case to expire", async || {
            let response = operator
                .get(&format!("/v1/alarms/{case_id}/contacts"))
                .await
                .ok()?;
            (response.status == 403).then_some(())
        })
        .await;
        // The missing receiver is reported, never fatal.
        let status = operator.get("/v1/status").await.unwrap().json();
        assert_eq!(status["receivers"][0]["connected"], false);
    });
}
