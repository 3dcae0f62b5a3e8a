-- Forward every CR/DX instance Orthanc stores to the TB screening node (modality "cxrnode" in
-- orthanc.json). The node's own results (SR, OT secondary capture) are never sent back to it.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'CR' or modality == 'DX') and origin['RemoteAet'] ~= 'CXRTB' then
    SendToModality(instanceId, 'cxrnode')
  end
end
