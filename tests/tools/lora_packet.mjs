// Builds and decodes LoRaWAN 1.0.x frames with the independent lora-packet library, so the
// test suite can check owlgate's codec against it in both directions.
//
//   node tests/tools/lora_packet.mjs < cases.json > results.json
//
// stdin: a JSON list of cases, each {"op": ..., ...} with bytes as hex strings. stdout: a JSON
// list of results in the same order; a case that lora-packet refuses gives {"error": "..."}.
// lora-packet keeps DevAddr, FCnt, EUIs and nonces big-endian in its field buffers, and takes
// the upper 16 bits of a 32-bit FCnt as a separate 2-byte buffer in wire (little-endian) order.
import lora_packet from "lora-packet";

const hex = (text) => Buffer.from(text ?? "", "hex");
const toHex = (buffer) => (buffer ? Buffer.from(buffer).toString("hex") : null);

const FCTRL_NAMES = ["ADR", "ADRACKReq", "ACK", "FPending"];

function buildData(c) {
  const fields = {
    MType: c.mtype,
    DevAddr: hex(c.dev_addr),
    FCnt: c.fcnt,
    FCtrl: Object.fromEntries(FCTRL_NAMES.map((name) => [name, Boolean(c.fctrl[name])])),
    FOpts: hex(c.fopts),
    payload: hex(c.payload),
  };
  if (c.fport !== null) fields.FPort = c.fport;
  const nwk = hex(c.nwk_s_key);
  const msb = hex(c.fcnt_msb);
  const packet = lora_packet.fromFields(fields, hex(c.app_s_key), nwk, undefined, msb);
  // Without FPort, fromFields neither encrypts nor computes a MIC: compute it here.
  if (c.fport === null) lora_packet.recalculateMIC(packet, nwk, undefined, msb);
  return { phy: toHex(packet.getPHYPayload()) };
}

function decodeData(c) {
  const packet = lora_packet.fromWire(hex(c.phy));
  const msb = hex(c.fcnt_msb);
  const nwk = hex(c.nwk_s_key);
  const port = packet.getFPort();
  return {
    mtype: packet.getMType(),
    dir: packet.getDir(),
    dev_addr: toHex(packet.DevAddr),
    fcnt: packet.getFCnt(),
    fport: port,
    fopts: toHex(packet.FOpts),
    fctrl: {
      ADR: packet.getFCtrlADR(),
      ADRACKReq: packet.getFCtrlADRACKReq(),
      ACK: packet.getFCtrlACK(),
      FPending: packet.getFCtrlFPending(),
    },
    frm_payload: toHex(packet.FRMPayload),
    mic: toHex(packet.MIC),
    mic_ok: lora_packet.verifyMIC(packet, nwk, undefined, msb),
    payload: port === null ? null : toHex(lora_packet.decrypt(packet, hex(c.app_s_key), nwk, msb)),
  };
}

function buildJoinRequest(c) {
  const packet = lora_packet.fromFields(
    { MType: "Join Request", AppEUI: hex(c.join_eui), DevEUI: hex(c.dev_eui), DevNonce: hex(c.dev_nonce) },
    undefined,
    undefined,
    hex(c.app_key),
  );
  return { phy: toHex(packet.getPHYPayload()) };
}

function decodeJoinRequest(c) {
  const packet = lora_packet.fromWire(hex(c.phy));
  return {
    mtype: packet.getMType(),
    join_eui: toHex(packet.AppEUI),
    dev_eui: toHex(packet.DevEUI),
    dev_nonce: toHex(packet.DevNonce),
    mic: toHex(packet.MIC),
    mic_ok: lora_packet.verifyMIC(packet, undefined, hex(c.app_key)),
  };
}

function buildJoinAccept(c) {
  const packet = lora_packet.fromFields(
    {
      MType: "Join Accept",
      AppNonce: hex(c.join_nonce),
      NetID: hex(c.net_id),
      DevAddr: hex(c.dev_addr),
      DLSettings: c.dl_settings,
      RxDelay: c.rx_delay,
      CFList: hex(c.cf_list),
    },
    undefined,
    undefined,
    hex(c.app_key),
  );
  return { phy: toHex(packet.getPHYPayload()) };
}

function decodeJoinAccept(c) {
  const appKey = hex(c.app_key);
  const plain = lora_packet.decryptJoinAccept(lora_packet.fromWire(hex(c.phy)), appKey);
  const packet = lora_packet.fromWire(plain);
  return {
    plain: toHex(plain),
    mtype: packet.getMType(),
    join_nonce: toHex(packet.AppNonce),
    net_id: toHex(packet.NetID),
    dev_addr: toHex(packet.DevAddr),
    dl_settings: packet.DLSettings[0],
    rx_delay: packet.RxDelay[0],
    cf_list: toHex(packet.CFList),
    mic: toHex(packet.MIC),
    mic_ok: lora_packet.verifyMIC(packet, undefined, appKey),
  };
}

function sessionKeys(c) {
  const keys = lora_packet.generateSessionKeys(
    hex(c.app_key),
    hex(c.net_id),
    hex(c.join_nonce),
    hex(c.dev_nonce),
  );
  return { nwk_s_key: toHex(keys.NwkSKey), app_s_key: toHex(keys.AppSKey) };
}

const OPS = {
  build_data: buildData,
  decode_data: decodeData,
  build_join_request: buildJoinRequest,
  decode_join_request: decodeJoinRequest,
  build_join_accept: buildJoinAccept,
  decode_join_accept: decodeJoinAccept,
  session_keys: sessionKeys,
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const results = cases.map((c) => {
  const op = OPS[c.op];
  if (!op) return { error: `unknown op ${c.op}` };
  try {
    return op(c);
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) };
  }
});
process.stdout.write(JSON.stringify(results));
