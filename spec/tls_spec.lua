-- TLS: amqps:// URLs with peer verification against a CA made by the test run
-- (scripts/rabbitmq.sh makes a CA, a server certificate for localhost, a client certificate
-- and a second, unrelated CA, and opens a TLS listener).
local delegate = require "amqp_delegate"

local url, tls_dir = os.getenv("AMQPS_URL"), os.getenv("TLS_DIR")

local function round_trip(options)
  options.url = options.url or url
  local delegator = delegate.delegator(options):start()
  local worker = delegate.worker { name = "tls_echo", url = options.url, tls = options.tls,
    task = function(x) return x end }:start()
  local result = delegator:invoke("tls_echo", "over TLS")
  worker:stop()
  delegator:stop()
  return result
end

local function failure(options)
  local ok, err = pcall(round_trip, options)
  assert.is_false(ok)
  return err
end

describe("TLS", function()
  it("connects with the right CA and calls a worker over amqps://", function()
    assert.is_string(url, "AMQPS_URL is set by scripts/test.sh")
    assert.are.equal("over TLS", round_trip { tls = { ca_file = tls_dir .. "/ca.pem" } })
  end)

  it("presents a client certificate and key", function()
    assert.are.equal("over TLS", round_trip { tls = { ca_file = tls_dir .. "/ca.pem",
      cert_file = tls_dir .. "/client.pem", key_file = tls_dir .. "/client.key" } })
  end)

  it("fails clearly with a CA that did not sign the broker's certificate", function()
    local err = failure { tls = { ca_file = tls_dir .. "/other-ca.pem" } }
    assert.are.equal("CONNECTION_FAILED", err.code)
    assert.matches("TLS: SSL peer cert verification failed", err.message)
    assert.matches("amqps://guest:%*%*%*@localhost:", err.message)
  end)

  it("checks that the certificate names the host", function()
    local err = failure { url = url:gsub("@localhost:", "@127.0.0.1:"),
      tls = { ca_file = tls_dir .. "/ca.pem" } }
    assert.matches("hostname verification failed", err.message)
  end)

  it("verifies by default: the system CAs do not know the test CA", function()
    assert.matches("verification failed", failure({}).message)
  end)

  it("says which file it cannot read", function()
    local err = failure { tls = { ca_file = "/nonexistent/ca.pem" } }
    assert.matches("cannot read the CA file '/nonexistent/ca.pem'", err.message)
  end)

  it("can be told not to verify (testing only)", function()
    assert.are.equal("over TLS", round_trip { tls = { verify = false } })
  end)

  it("refuses bad TLS options", function()
    local ok, err = pcall(delegate.delegator, { url = url, tls = { ca = "x" } })
    assert.are.equal("BAD_ARGUMENT", err.code)
    assert.matches("unknown option 'ca' for tls", err.message)
  end)
end)

describe("TLS from the command line", function()
  local broker = require "spec.helpers.broker"
  local support = require "spec.support"
  after_each(function() broker.kill_all() end)

  it("run and call take --ca-file, --cert-file and --key-file", function()
    support.host({ "scripts/adder.lua" }, { url = url,
      flags = { "--ca-file", tls_dir .. "/ca.pem", "--cert-file", tls_dir .. "/client.pem",
        "--key-file", tls_dir .. "/client.key" } })
    local binary = broker.shell_quote(support.host_binary())
    local out, status, err = broker.run(binary .. " call --url " .. broker.shell_quote(url) ..
      " --ca-file " .. broker.shell_quote(tls_dir .. "/ca.pem") .. " adder 10 15")
    assert.are.equal(0, status, err)
    assert.are.equal("25\n", out)
    out, status, err = broker.run(binary .. " call --url " .. broker.shell_quote(url) ..
      " --ca-file " .. broker.shell_quote(tls_dir .. "/other-ca.pem") .. " adder 10 15")
    assert.are.equal(3, status)
    assert.matches("CONNECTION_FAILED: .*TLS: SSL peer cert verification failed", err)
    assert.falsy(err:find("guest:guest", 1, true))
  end)
end)
