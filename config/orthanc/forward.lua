-- Forward every CR/DX instance Orthanc stores to the TB screening node (modality "cxrnode" in
-- orthanc.json). The node's own results (SR, OT secondary capture) are never sent back to it.
-- One asynchronous store job per instance, not SendToModality: Orthanc's Lua "sequence of operations"
-- job ends as Success even when the node was unreachable, so the film would be dropped unseen; a store
-- job that fails stays visible as failed and `scripts/pacs.sh up` resubmits it.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'CR' or modality == 'DX') and origin['RemoteAet'] ~= 'CXRTB' then
    RestApiPost('/modalities/cxrnode/store',
                '{"Resources": ["' .. instanceId .. '"], "Asynchronous": true, "Permissive": false}', true)
  end
end
