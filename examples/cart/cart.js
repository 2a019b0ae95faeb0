#!/usr/bin/env node
// A stateless shopping-cart backend for tandem's proxy mode (Node, no dependencies).
//
// It keeps nothing between requests: tandem hands it the session in request headers and takes
// changes back from response headers (README, "The backend contract").
//
//     node cart.js --port 9001 --name cart1
//
//     GET  /cart                 the cart: {"backend", "user", "items"}
//     POST /cart/add?item=NAME   add one item
//     POST /login?user=NAME      store the user and renew the session id (against fixation)
//     POST /logout               invalidate the session
'use strict';
const http = require('http');

const PREFIX = 'x-tandem-session';
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf('--' + name);
  return i >= 0 ? args[i + 1] : fallback;
};
const NAME = option('name', 'cart');
const PORT = Number(option('port'));

// Header values must be ASCII: JSON.stringify leaves non-ASCII text as it is, so escape it
// as \uXXXX, which every JSON parser (tandem's included) reads back.
const asciiJson = (value) =>
  JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));

const server = http.createServer((request, response) => {
  const url = new URL(request.url, 'http://backend');
  const data = request.headers[PREFIX + '-data'];
  const session = data ? JSON.parse(data) : {};
  const answer = (body, sessionHeaders = {}) => {
    for (const [name, value] of Object.entries(sessionHeaders)) {
      response.setHeader(PREFIX + '-' + name, value);
    }
    response.setHeader('Content-Type', 'application/json');
    response.end(JSON.stringify(body));
  };
  request.resume();
  request.on('end', () => {
    if (request.method === 'GET' && url.pathname === '/health') return answer({ ok: true });
    if (request.method === 'GET' && url.pathname === '/cart') {
      return answer({ backend: NAME, user: session.user ?? null, items: session.items ?? [] });
    }
    if (request.method === 'POST' && url.pathname === '/cart/add' && url.searchParams.get('item')) {
      const items = (session.items ?? []).concat([url.searchParams.get('item')]);
      return answer({ backend: NAME, items }, { patch: asciiJson({ items }) });
    }
    if (request.method === 'POST' && url.pathname === '/login' && url.searchParams.get('user')) {
      const user = url.searchParams.get('user');
      return answer({ backend: NAME, user }, { patch: asciiJson({ user }), command: 'renew' });
    }
    if (request.method === 'POST' && url.pathname === '/logout') {
      return answer({ backend: NAME, user: null }, { command: 'invalidate' });
    }
    response.statusCode = 404;
    response.end();
  });
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`${NAME} listening on 127.0.0.1:${server.address().port}`);
});
