// A real OpenID Provider for Mayfly's single sign-on tests: panva's certified `oidc-provider`
// (version pinned in package.json and package-lock.json), run on Node.js by the tests
// (crates/mayfly-server/tests/it/sso.rs) as `node provider.js --port P --redirect-uri URL`.
//
// - Two confidential clients with the broker's redirect URI: `mayfly` (secret `mayfly-secret`),
//   the one the broker is configured with, and `other` (secret `other-secret`), whose ID tokens
//   the tests substitute to show a wrong audience is refused. PKCE is required.
// - Accounts: any login name is an account whose `sub` is that name; `preferred_username` is the
//   name and `groups` come from GROUPS below, unless the test changed them (`/__test/account`).
// - The login and consent pages are the package's development interactions, driven by the test
//   with plain HTTP (a form POST of `login`/`password`, then of `prompt=consent`).
// - `/__test/tamper` plays the part of a relay in front of the token endpoint: the next token
//   answer has its ID token's signature flipped, or its ID token replaced by one the test gives
//   (an earlier one: wrong nonce; one issued to `other`: wrong audience), or padded past 256 KiB. `/__test/tokens` lists
//   the ID tokens issued so far. Nothing else of the provider is changed.
import Provider from 'oidc-provider';

function arg(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

const port = Number(arg('port', '0'));
const redirectUri = arg('redirect-uri', 'http://127.0.0.1:8200/v1/sso/callback');
const issuer = `http://127.0.0.1:${port}`;

const GROUPS = {
  carol: ['idp-engineering', 'idp-unmapped'],
  dave: ['idp-ops'],
  alice: ['idp-engineering'],
};
const overrides = {};
const issued = [];
let tamper = null;

const client = (id, secret) => ({
  client_id: id,
  client_secret: secret,
  redirect_uris: [redirectUri],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  require_auth_time: true,
});

const provider = new Provider(issuer, {
  clients: [client('mayfly', 'mayfly-secret'), client('other', 'other-secret')],
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], profile: ['preferred_username', 'groups'] },
  cookies: { keys: ['mayfly-test-cookie-key'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        const changed = overrides[id] || {};
        return {
          sub: id,
          preferred_username: changed.username ?? id,
          groups: changed.groups ?? GROUPS[id] ?? [],
        };
      },
    };
  },
});

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) {
    const q = ctx.query;
    if (ctx.path === '/__test/tamper') {
      tamper = { mode: q.mode, token: q.token };
    } else if (ctx.path === '/__test/account') {
      overrides[q.login] = {
        username: q.username || undefined,
        groups: q.groups === undefined ? undefined : q.groups.split(',').filter(Boolean),
      };
    } else if (ctx.path === '/__test/tokens') {
      ctx.body = issued;
      return;
    }
    ctx.body = { ok: true };
    return;
  }
  await next();
  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.status === 200 && ctx.body?.id_token) {
    issued.push({ client_id: ctx.oidc?.client?.clientId, id_token: ctx.body.id_token });
    if (tamper) {
      const { mode, token } = tamper;
      tamper = null;
      if (mode === 'flip') {
        const [header, payload, signature] = ctx.body.id_token.split('.');
        const flipped = (signature[5] === 'A' ? 'B' : 'A');
        ctx.body = { ...ctx.body, id_token: `${header}.${payload}.${signature.slice(0, 5)}${flipped}${signature.slice(6)}` };
      } else if (mode === 'substitute') {
        ctx.body = { ...ctx.body, id_token: token };
      } else if (mode === 'huge') {
        ctx.body = { ...ctx.body, padding: 'x'.repeat(300 * 1024) };
      }
    }
  }
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
