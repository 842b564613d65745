// The app itself, in one resource group: a user-assigned identity, the storage account the Functions
// host and Durable Functions use through that identity (no keys: shared key access is off), Log Analytics
// + Application Insights (Entra-authenticated ingestion), a Flex Consumption plan and the Python 3.11
// Function App, and optionally an Azure Compute Gallery.
param environmentName string
param location string
param tags object
param taskHub string
param createGallery bool
param principalId string
param principalType string

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var deploymentContainer = 'app-package-${take(token, 8)}'

// Built-in roles (ids are the same in every tenant)
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-imagebuilder-${token}'
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stib${take(token, 18)}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
}

// Run Command streams each step's whole stdout/stderr here (append blobs, one user-delegation SAS per
// blob); the run's customization.log keeps the text, so these blobs go after a week.
resource runCommandContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'imagebuilder-runcommand'
}

resource storageLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'runcommand-logs'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: { blobTypes: ['appendBlob'], prefixMatch: ['imagebuilder-runcommand/'] }
            actions: { baseBlob: { delete: { daysAfterModificationGreaterThan: 7 } } }
          }
        }
      ]
    }
  }
}

var storageRoles = [storageBlobDataOwner, storageQueueDataContributor, storageTableDataContributor]

resource appStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in storageRoles: {
    name: guid(storage.id, identity.id, roleId)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource userStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in (empty(principalId) ? [] : storageRoles): {
    name: guid(storage.id, principalId, roleId)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: principalId
      principalType: principalType
    }
  }
]

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-imagebuilder-${token}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-imagebuilder-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

resource insightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-imagebuilder-${token}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-imagebuilder-${token}'
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: { name: 'python', version: '3.11' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        // Host and Durable Functions storage through the identity: no connection string, no key.
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
        { name: 'IMAGEBUILDER_PROVIDER', value: 'azure' }
        { name: 'IMAGEBUILDER_TASK_HUB', value: taskHub }
        // The provider's ARM credential: this user-assigned identity (ManagedIdentityCredential).
        { name: 'IMAGEBUILDER_AZURE_CLIENT_ID', value: identity.properties.clientId }
        { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
        // Timer schedules and the artifacts container of the event-driven builds (triggers/README.md):
        // the host resolves these %SETTING% binding expressions and refuses to start a function without them.
        { name: 'IMAGEBUILDER_SOURCE_TRIGGER_SCHEDULE', value: '0 * * * * *' }
        { name: 'IMAGEBUILDER_SCHEDULE_TRIGGER_SCHEDULE', value: '0 * * * * *' }
        { name: 'IMAGEBUILDER_SWEEP_SCHEDULE', value: '30 */5 * * * *' }
        { name: 'IMAGEBUILDER_ARTIFACTS_CONTAINER', value: 'image-artifacts' }
        // Build VMs past Queued at once across the app (the default): raise it with your regional vCPU quota.
        { name: 'IMAGEBUILDER_MAX_CONCURRENT_BUILDS', value: '5' }
      ]
    }
  }
  dependsOn: [appStorageRoles, packageContainer]
}

resource gallery 'Microsoft.Compute/galleries@2023-07-03' = if (createGallery) {
  name: 'gal_imagebuilder_${take(token, 8)}'
  location: location
  tags: tags
  properties: { description: 'Images built by imagebuilder-functions' }
}

output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output functionAppName string = site.name
output functionAppUrl string = 'https://${site.properties.defaultHostName}'
output galleryId string = createGallery ? gallery.id : ''
