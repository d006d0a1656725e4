-- Argo CD health check for stagewright.dev/ImageBuild.
--
-- Why it is needed: Argo CD assesses only the kinds it knows (built-in Go checks and the Lua
-- scripts it ships); a custom resource without a check gets no health at all, so a failed
-- build would never turn an Application Degraded. Install it in the argocd-cm ConfigMap
-- (see docs/install.md, "GitOps"):
--
--   data:
--     resource.customizations.health.stagewright.dev_ImageBuild: |
--       <this file>
--
-- It reads the kstatus conditions the operator writes (Ready, Reconciling, Stalled), and
-- only trusts them for the current spec: a condition whose observedGeneration is older than
-- metadata.generation describes a previous build.
local hs = {}

local function current(condition)
  return condition.observedGeneration == nil or obj.metadata.generation == nil
    or condition.observedGeneration == obj.metadata.generation
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the build"
  return hs
end

if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to build generation " .. tostring(obj.metadata.generation)
  return hs
end

local byType = {}
for _, condition in ipairs(obj.status.conditions) do
  if current(condition) then
    byType[condition.type] = condition
  end
end

-- "Reason: message"; Stalled's message already starts with its reason (for kstatus clients).
local function describe(condition)
  local text = condition.reason or ""
  local message = condition.message or ""
  if message == "" then
    return text
  end
  if string.sub(message, 1, string.len(text) + 1) == text .. ":" then
    return message
  end
  return text .. ": " .. message
end

if byType.Stalled ~= nil and byType.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(byType.Stalled)
  return hs
end
if byType.Ready ~= nil and byType.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = obj.status.image or describe(byType.Ready)
  return hs
end
hs.status = "Progressing"
if byType.Reconciling ~= nil and byType.Reconciling.status == "True" then
  hs.message = describe(byType.Reconciling)
else
  hs.message = "Waiting for the build to finish"
end
return hs
