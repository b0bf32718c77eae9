#!/usr/bin/env node
// An SMPP client built on the npm `smpp` package (farhadi/node-smpp), driven by the interop
// tests. It binds, submits the messages given, answers every deliver_sm, prints one JSON
// object per line for each event, and exits when everything expected has arrived (code 0)
// or when the deadline passes (code 2). Any error exits with code 3.
//
//   node client.js --port P [--host H] --mode trx|tx|rx --system-id S --password W
//       [--messages JSON] [--expect-receipts N] [--expect-mo N] [--deadline-ms MS]
//
// --messages: [{"text": "...", "coding": "gsm"|"ucs2", "src": "...", "dst": "..."}, ...];
// a text longer than one short message is split here into parts with a concatenation UDH
// (IEI 0x00, 8-bit reference). --expect-receipts defaults to the number of parts submitted
// in trx mode and 0 otherwise.
//
// Events: {"event":"bound"}, {"event":"submit_sm_resp", index, part, parts, status,
// message_id}, {"event":"deliver_sm", kind: "receipt"|"mo", esm_class, data_coding, text,
// udh, source_addr, destination_addr, receipted_message_id, message_state},
// {"event":"done"} / {"event":"deadline"} / {"event":"error"}.
'use strict';

const smpp = require('smpp');

function parseArgs(argv) {
	const args = {};
	for (let i = 0; i < argv.length; i += 2) {
		if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
			throw new Error('bad argument: ' + argv[i]);
		}
		args[argv[i].slice(2)] = argv[i + 1];
	}
	return args;
}

const args = parseArgs(process.argv.slice(2));
const mode = args.mode || 'trx';
if (!['trx', 'tx', 'rx'].includes(mode)) {
	throw new Error('mode must be trx, tx or rx');
}
const messages = JSON.parse(args.messages || '[]');
const deadlineMs = Number(args['deadline-ms'] || 10000);

function emit(obj) {
	process.stdout.write(JSON.stringify(obj) + '\n');
}

let finished = false;
function finish(event, code, extra) {
	if (finished) {
		return;
	}
	finished = true;
	clearTimeout(deadlineTimer);
	emit(Object.assign({event: event}, extra || {}));
	const exit = () => process.stdout.write('', () => process.exit(code));
	if (bound && event === 'done') {
		// Unbind politely; do not wait for ever for unbind_resp.
		const fallback = setTimeout(exit, 1000);
		session.unbind(() => {
			clearTimeout(fallback);
			session.destroy();
			exit();
		});
	} else {
		session.destroy();
		exit();
	}
}

const deadlineTimer = setTimeout(() => finish('deadline', 2, {state: progress()}), deadlineMs);

// --- splitting ----------------------------------------------------------------------------

const GSM_BASIC = '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1BÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?' +
	'¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà';
const GSM_EXTENDED = '\f^{}\\[~]|€';

function units(ch, coding) {
	if (coding === 'ucs2') {
		return ch.length; // UTF-16 code units: a surrogate pair takes two
	}
	if (GSM_BASIC.includes(ch)) {
		return 1;
	}
	if (GSM_EXTENDED.includes(ch)) {
		return 2;
	}
	throw new Error('not GSM 03.38: ' + JSON.stringify(ch));
}

// Split into chunks of at most `size` units without breaking a character.
function chunks(text, coding, size) {
	const out = [];
	let current = '';
	let used = 0;
	for (const ch of text) { // iterates code points, so surrogate pairs stay together
		const n = units(ch, coding);
		if (used + n > size) {
			out.push(current);
			current = '';
			used = 0;
		}
		current += ch;
		used += n;
	}
	out.push(current);
	return out;
}

function plan(msg, ref) {
	const coding = msg.coding || 'gsm';
	const single = coding === 'ucs2' ? 70 : 160;
	const part = coding === 'ucs2' ? 67 : 153;
	let total = 0;
	for (const ch of msg.text) {
		total += units(ch, coding);
	}
	if (total <= single) {
		return [msg.text];
	}
	const texts = chunks(msg.text, coding, part);
	return texts.map((t, i) => ({
		udh: Buffer.from([0x05, 0x00, 0x03, ref & 0xff, texts.length, i + 1]),
		message: t,
	}));
}

// --- session ------------------------------------------------------------------------------

let bound = false;
let partsSent = 0;
let responses = 0;
let receipts = 0;
let mo = 0;
const expectReceiptsArg = args['expect-receipts'];
let expectReceipts = expectReceiptsArg === undefined ? null : Number(expectReceiptsArg);
const expectMo = Number(args['expect-mo'] || 0);

function progress() {
	return {parts_sent: partsSent, responses: responses, receipts: receipts, mo: mo};
}

function checkDone() {
	if (!bound || responses < partsSent) {
		return;
	}
	if (receipts >= (expectReceipts || 0) && mo >= expectMo) {
		finish('done', 0, {state: progress()});
	}
}

const session = smpp.connect({host: args.host || '127.0.0.1', port: Number(args.port)});

session.on('error', (err) => finish('error', 3, {message: String(err && err.message || err)}));
session.on('close', () => {
	if (!finished) {
		finish('error', 3, {message: 'connection closed', state: progress()});
	}
});

session.on('deliver_sm', (pdu) => {
	const receipt = (pdu.esm_class & 0x3c) !== 0;
	const sm = pdu.short_message || {};
	emit({
		event: 'deliver_sm',
		kind: receipt ? 'receipt' : 'mo',
		esm_class: pdu.esm_class,
		data_coding: pdu.data_coding,
		source_addr: pdu.source_addr,
		destination_addr: pdu.destination_addr,
		text: typeof sm.message === 'string' ? sm.message : null,
		udh: sm.udh ? sm.udh.map((b) => b.toString('hex')) : null,
		receipted_message_id: pdu.receipted_message_id === undefined ? null : pdu.receipted_message_id,
		message_state: pdu.message_state === undefined ? null : pdu.message_state,
	});
	session.send(pdu.response());
	if (receipt) {
		receipts += 1;
	} else {
		mo += 1;
	}
	checkDone();
});

session.on('unbind', (pdu) => {
	session.send(pdu.response());
	finish('error', 3, {message: 'unbound by peer', state: progress()});
});

session.on('enquire_link', (pdu) => session.send(pdu.response()));

session.on('connect', () => {
	const bind = {trx: 'bind_transceiver', tx: 'bind_transmitter', rx: 'bind_receiver'}[mode];
	session[bind]({system_id: args['system-id'], password: args.password || ''}, (pdu) => {
		if (pdu.command_status !== 0) {
			finish('error', 3, {message: 'bind refused', status: pdu.command_status});
			return;
		}
		bound = true;
		emit({event: 'bound', mode: mode, system_id: pdu.system_id});
		submitAll();
		checkDone();
	});
});

function submitAll() {
	if (mode === 'rx') {
		return;
	}
	const all = [];
	messages.forEach((msg, index) => {
		const parts = plan(msg, index + 1);
		parts.forEach((shortMessage, i) => all.push({msg, index, part: i + 1, parts: parts.length, shortMessage}));
	});
	if (expectReceipts === null) {
		expectReceipts = mode === 'trx' ? all.length : 0;
	}
	partsSent = all.length;
	for (const item of all) {
		session.submit_sm({
			source_addr: item.msg.src || '1234',
			destination_addr: item.msg.dst || '447700900001',
			registered_delivery: 1,
			data_coding: item.msg.coding === 'ucs2' ? 8 : 0,
			short_message: item.shortMessage,
		}, (pdu) => {
			responses += 1;
			emit({
				event: 'submit_sm_resp',
				index: item.index,
				part: item.part,
				parts: item.parts,
				status: pdu.command_status,
				message_id: pdu.message_id === undefined ? null : pdu.message_id,
			});
			checkDone();
		});
	}
}
