// A real OpenID provider (oidc-provider from npm) for corral's SSO tests, on loopback only.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {"port", "keys_file", "device_flow", "clients": [{client_id, client_secret,
//          redirect_uris}], "users": {"<login>": {"email", "name", "groups"}}}
// Clients and users are read from CONFIG at each lookup, so a test can add a redirect URI
// (a server on a new port) or drop a user from a group while the provider runs. The signing
// key lives in keys_file (made if absent): deleting it and restarting rotates the key.
// Logins use oidc-provider's development interactions: the login name is the account id.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

import Provider from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const configPath = process.argv[2];
const read = () => JSON.parse(readFileSync(configPath, 'utf8'));
const boot = read();

function signingKeys() {
  if (!existsSync(boot.keys_file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256',
      use: 'sig' };
    writeFileSync(boot.keys_file, JSON.stringify({ keys: [jwk] }), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(boot.keys_file, 'utf8'));
}

class Adapter {
  constructor(name) {
    this.name = name;
    this.memory = new MemoryAdapter(name);
  }

  async find(id) {
    if (this.name !== 'Client') return this.memory.find(id);
    const client = read().clients.find((c) => c.client_id === id);
    if (!client) return undefined;
    return {
      grant_types: ['authorization_code', 'refresh_token',
        'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...client,
    };
  }

  upsert(...a) { return this.memory.upsert(...a); }
  findByUserCode(...a) { return this.memory.findByUserCode(...a); }
  findByUid(...a) { return this.memory.findByUid(...a); }
  consume(...a) { return this.memory.consume(...a); }
  destroy(...a) { return this.memory.destroy(...a); }
  revokeByGrantId(...a) { return this.memory.revokeByGrantId(...a); }
}

const issuer = `http://127.0.0.1:${boot.port}`;
const provider = new Provider(issuer, {
  adapter: Adapter,
  jwks: signingKeys(),
  // Accounts are looked up at every login and refresh: a user gone from CONFIG fails both.
  async findAccount(_ctx, id) {
    const user = read().users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: user.email, email_verified: true, name: user.name,
          groups: read().users[id]?.groups ?? [] };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'],
    groups: ['groups'] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: Boolean(boot.device_flow) },
    revocation: { enabled: true },
  },
  async issueRefreshToken(_ctx, client) { return client.grantTypeAllowed('refresh_token'); },
  // Consent is granted on login (a test IdP): every requested scope is given.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile groups offline_access');
    await grant.save();
    return grant;
  },
  ttl: { IdToken: boot.id_token_ttl ?? 3600, AccessToken: 3600, DeviceCode: 600,
    RefreshToken: 86400, Session: 86400, Interaction: 600, Grant: 86400 },
});
provider.proxy = false;

provider.listen(boot.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
